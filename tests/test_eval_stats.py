"""Evaluation statistics against hand-computed values."""

import json
import math

import pytest
import torch

from alignkit.evaluate.stats import mean_ci, paired_difference, pairwise_agreement, win_rate


def test_mean_ci_hand_values():
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0])
    # mean 2.5; sample variance = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3; half = 1.96 * sqrt(5/3 / 4)
    assert mean == 2.5
    assert half == pytest.approx(1.959963984540054 * math.sqrt(5 / 12))
    assert mean_ci([7.0]) == (7.0, float("inf"))
    with pytest.raises(ValueError):
        mean_ci([])


def test_win_rate_counts_ties_half():
    assert win_rate([1, 0, 0.5, 2], [0, 1, 0.5, 1]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    with pytest.raises(ValueError):
        win_rate([1], [1, 2])


def test_pairwise_agreement():
    # prompt 0: gold orders a > b > c, the model orders a > c > b -> pairs (a,b) ok, (a,c) ok, (b,c) wrong
    # prompt 1: gold tie -> skipped
    acc, n = pairwise_agreement([3, 1, 2, 5, 4], [0.9, 0.5, 0.1, 0.3, 0.3], [0, 0, 0, 1, 1])
    assert n == 3 and acc == pytest.approx(2 / 3)
    acc, n = pairwise_agreement([1, 2], [0.5, 0.5], [0, 0])
    assert n == 0 and math.isnan(acc)
    # min_gap 0.41: only (a,c), gap 0.8, counts (ordered right); (a,b) and (b,c), gap 0.4, drop out
    acc, n = pairwise_agreement([3, 1, 2, 5, 4], [0.9, 0.5, 0.1, 0.3, 0.3], [0, 0, 0, 1, 1], min_gap=0.41)
    assert n == 1 and acc == 1.0
    # min_gap 0.3: all three pairs count again, and the wrongly ordered (b,c) with them
    acc, n = pairwise_agreement([3, 1, 2, 5, 4], [0.9, 0.5, 0.1, 0.3, 0.3], [0, 0, 0, 1, 1], min_gap=0.3)
    assert n == 3 and acc == pytest.approx(2 / 3)


def test_paired_difference_hand_values():
    # differences 0.3, 0.2, 0.4, 0.3: mean 0.3, sample variance (0 + 0.01 + 0.01 + 0) / 3, half = z·sqrt(var / 4)
    reference = [0.1, 0.9, -0.5, 0.4]
    policy = [0.4, 1.1, -0.1, 0.7]
    mean, half = paired_difference(policy, reference)
    assert mean == pytest.approx(0.3)
    assert half == pytest.approx(1.959963984540054 * math.sqrt(0.02 / 3 / 4))
    # prompts differ far more than the policy's gain varies: each model's own interval is far wider
    assert half < mean_ci(policy)[1] / 5
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])


def test_eval_samples_are_reused_only_while_nothing_changed(tiny_model, tmp_path):
    """The evaluation sample cache: a rerun reuses each model's samples; a changed policy folder, prompt list or
    setting samples again (a cache keyed on too little would pass the demo's reuse test but fail here)."""
    import shutil

    from alignkit.evaluate.run import evaluate_policies
    from alignkit.rollout.sample import SampleSettings

    policy = tmp_path / "policy"
    shutil.copytree(tiny_model, policy)
    prompts = ["Write about the river", "Write about the city"]
    out = tmp_path / "eval"

    def run(ps=prompts, **settings):
        evaluate_policies({"p": str(policy)}, tiny_model, ps, "vader", output_dir=out,
                          settings=SampleSettings(max_new_tokens=4, **settings))
        return {f.name: f.stat().st_mtime_ns for f in (out / "samples").glob("*.json")}

    first = run()
    assert set(first) == {"reference.json", "p.json"}
    assert run() == first  # nothing changed: nothing sampled
    (policy / "config.json").write_text((policy / "config.json").read_text())  # the policy folder changed
    again = run()
    assert again["p.json"] != first["p.json"] and again["reference.json"] == first["reference.json"]
    for changed in (run(ps=prompts[:1]), run(ps=prompts[:1], seed=3)):  # other prompts, then another seed
        assert changed["p.json"] != again["p.json"] and changed["reference.json"] != again["reference.json"]
        again = changed


def test_eval_kl_is_to_the_reference_on_the_plain_prompt(tiny_model, tmp_path, monkeypatch):
    """The sampler's log-probs and the packed reference pass, against fresh single-row forward passes: a copy of
    the reference has KL 0; a Chain of Hindsight policy samples after its phrase and is compared with the
    reference answering the plain prompt."""
    import shutil

    from alignkit.evaluate.run import evaluate_policies
    from alignkit.models.load import load_causal_lm, load_tokenizer
    from alignkit.rollout.sample import SampleSettings, prompt_encoder, sample_policy, sequence_logps

    same, coh = tmp_path / "same", tmp_path / "coh"
    for p in (same, coh):
        shutil.copytree(tiny_model, p)
    (coh / "alignkit_coh.json").write_text(json.dumps({"positive": " Great answer:", "negative": " Bad answer:"}))
    prompts = ["Write about the river", "Write about the old city", "Say"]
    s = SampleSettings(max_new_tokens=6, samples=2, seed=1)
    tok, model = load_tokenizer(tiny_model), load_causal_lm(tiny_model).eval()
    enc = prompt_encoder(tok, s)

    def by_hand(prompt: str, response: list[int]) -> float:
        ids = enc.prompt_ids(prompt)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + response])).logits[0, len(ids) - 1 : -1]
        return float(torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(response)[:, None]).sum())

    sm = sample_policy(str(coh), tok, prompts, s)
    assert len(sm.response_ids) == 6 and all(sm.response_ids)
    for p, r, lp in zip(sm.prompts, sm.response_ids, sm.logp, strict=True):
        assert lp == pytest.approx(by_hand(p + " Great answer:", r), abs=1e-3)  # sampled after the phrase
    plain = [enc.prompt_ids(p) for p in sm.prompts]
    ref = sequence_logps(model, plain, sm.response_ids, tok.pad_token_id, 1.0)
    expected = [by_hand(p, r) for p, r in zip(sm.prompts, sm.response_ids, strict=True)]
    assert ref == pytest.approx(expected, abs=1e-3)
    # a model that takes no packed rows is scored one sequence per row
    from types import SimpleNamespace

    from alignkit.rollout import sample as sample_module

    monkeypatch.setattr(sample_module, "capabilities", lambda m: SimpleNamespace(packing="no block mask"))
    assert sequence_logps(model, plain, sm.response_ids, tok.pad_token_id, 1.0) == pytest.approx(expected, abs=1e-3)
    monkeypatch.undo()
    gap = [a - b for a, b in zip(sm.logp, expected, strict=True)]
    assert max(abs(g) for g in gap) > 0.05  # the phrase changes what the model says

    res = evaluate_policies({"same": str(same), "coh": str(coh)}, tiny_model, prompts, "vader", settings=s)
    assert res["models"]["same"]["kl"] == pytest.approx(0.0, abs=1e-3)
    assert res["models"]["coh"]["kl"] == pytest.approx(sum(gap) / len(gap), abs=1e-3)


def test_length_controlled_win_rate_matches_a_weighted_logistic_regression():
    """σ(θ₀) of the soft-label logistic regression on tanh(Δ/s_Δ), against scikit-learn fitting the same model on
    the outcomes duplicated as wins and losses weighted p and 1 − p (the soft-label likelihood)."""
    import math
    import random

    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from alignkit.evaluate.stats import length_controlled_win_rate

    rng = random.Random(0)
    d = [rng.gauss(0, 20) for _ in range(200)]
    sd = float(np.std(d))
    p = [min(0.99, max(0.01, 1 / (1 + math.exp(-(0.4 + 1.5 * math.tanh(x / sd)))) + rng.uniform(-0.05, 0.05)))
         for x in d]
    x = np.array([[math.tanh(v / sd)] for v in d])
    fit = LogisticRegression(C=1e8, tol=1e-12, max_iter=10000).fit(
        np.vstack([x, x]), np.array([1] * 200 + [0] * 200), sample_weight=np.array(p + [1 - q for q in p]))
    lc = length_controlled_win_rate(p, d)
    assert lc == pytest.approx(1 / (1 + math.exp(-fit.intercept_[0])), abs=1e-5)
    assert lc > sum(p) / len(p) + 0.02  # the raw mean averages σ over the length spread, which pulls it towards 1/2
    # a judge that only rewards length: at equal length it is a coin flip
    only_length = [1 / (1 + math.exp(-2.0 * math.tanh(v / sd))) for v in d]
    assert length_controlled_win_rate(only_length, d) == pytest.approx(0.5, abs=1e-6)
    assert length_controlled_win_rate([0.7, 0.9], [3.0, 3.0]) == pytest.approx(0.8)  # no spread: the mean


def test_eval_scoring_passes_in_bf16(tiny_model, tmp_path, monkeypatch):
    """`mixed_precision="bf16"` runs the reference pass and the reward model in bf16 autocast on the same samples:
    KL and reward scores agree with float32's to bf16 rounding (8 significant bits: ~0.4% of each logit and hidden
    value, a few hundredths summed over 4 tokens), while the reward scores keep float32 resolution (the scalar head
    runs outside autocast: a bf16 scalar keeps 3 significant digits, too few to rank close responses)."""
    import shutil

    from alignkit.evaluate import run as evaluate_run
    from alignkit.models.load import load_reward_model, load_tokenizer
    from alignkit.rollout.rewards import ModelReward
    from alignkit.rollout.sample import SampleSettings

    policy, rm_dir = tmp_path / "policy", tmp_path / "rm"
    shutil.copytree(tiny_model, policy)
    torch.manual_seed(0)
    load_reward_model(tiny_model).save_pretrained(rm_dir)
    load_tokenizer(tiny_model).save_pretrained(rm_dir)
    prompts = ["Write about the river", "Write about the old city", "Say", "Tell me of the sea"]
    s = SampleSettings(max_new_tokens=4, samples=2, seed=1)
    passes = []  # (which pass, whether autocast was on)
    real_logps, real_reward = evaluate_run.sequence_logps, ModelReward.__call__
    monkeypatch.setattr(evaluate_run, "sequence_logps",
                        lambda *a: passes.append(("ref", torch.is_autocast_enabled("cpu"))) or real_logps(*a))
    monkeypatch.setattr(ModelReward, "__call__",
                        lambda self, *a: passes.append(("rm", torch.is_autocast_enabled("cpu"))) or real_reward(self, *a))
    res = {}
    for mp in ("no", "bf16"):
        passes.clear()
        res[mp] = evaluate_run.evaluate_policies({"same": str(policy)}, tiny_model, prompts, "vader",
                                                 reward_model=str(rm_dir), settings=s, output_dir=tmp_path / "eval",
                                                 mixed_precision=mp)
        assert passes == [("ref", mp == "bf16"), ("rm", mp == "bf16")], mp
    assert res["bf16"]["settings"]["mixed_precision"] == "bf16"
    same = {mp: r["models"]["same"] for mp, r in res.items()}
    assert [x["response"] for x in same["bf16"]["samples"]] == [x["response"] for x in same["no"]["samples"]]
    assert same["no"]["kl"] == pytest.approx(0.0, abs=1e-4)  # a copy of the reference, both passes float32
    assert same["bf16"]["kl"] == pytest.approx(0.0, abs=0.05)  # the bf16 reference pass rounds, and no more
    assert same["bf16"]["rm_mean"] == pytest.approx(same["no"]["rm_mean"], abs=0.02)
    monkeypatch.undo()

    reward = ModelReward(str(rm_dir))
    responses = [f" the river {w} and slow" for w in ("runs", "ran", "is", "was", "goes", "went", "bends", "turns")]
    full = reward(prompts[:1] * 8, responses)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = reward(prompts[:1] * 8, responses)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, full, atol=0.02, rtol=0.02)
    assert (mixed != mixed.to(torch.bfloat16).float()).any()  # not a bf16 number cast up
