"""Rollouts as training batches (`train.online.rollout_batch`): packed, each prompt laid out once for all its samples
and no padding, or one sequence per row. Per-token log-probs and value estimates equal those of the rollout's own
left-padded rows (float32, 1e-5), and RLOO and PPO train the same curves packed or one per row."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignkit import PPOConfig, RLOOConfig, run_ppo, run_rloo
from alignkit.models.logprobs import response_logprobs, response_values, score
from alignkit.rollout.engine import Rollout
from alignkit.train.online import rollout_batch, rollout_tokens
from conftest import synthetic_pairs, write_jsonl
from test_rl import REWARD_PY

PROMPTS = [[5, 17, 30, 44], [9, 13], [21, 22, 23, 24, 25, 26]]


@pytest.fixture(scope="module")
def lm(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()


def _rollout(lm, tiny_model, k=3):
    """k samples per prompt (consecutive rows) laid out as the sampler does (prompts left-padded, responses
    right-padded), responses of different lengths."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    gen = torch.Generator().manual_seed(0)
    lengths = [5, 3, 7, 1, 4, 6, 2, 7, 5][: k * len(PROMPTS)]
    width, steps, pad = max(map(len, PROMPTS)), max(lengths), tok.pad_token_id
    rows = len(lengths)
    input_ids = torch.full((rows, width + steps), pad, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    response_mask = torch.zeros((rows, steps), dtype=torch.long)
    for i, n in enumerate(lengths):
        p = PROMPTS[i // k]
        input_ids[i, width - len(p) : width] = torch.tensor(p)
        input_ids[i, width : width + n] = torch.randint(3, lm.config.vocab_size, (n,), generator=gen)
        attention[i, width - len(p) : width + n] = 1
        response_mask[i, :n] = 1
    return Rollout(input_ids, attention, width, response_mask, torch.zeros(response_mask.shape),
                   torch.zeros(rows, dtype=torch.bool)), tok


def _batch(ro, tok, layout, attention_mask=None):
    batch = rollout_batch(ro.input_ids, ro.attention_mask if attention_mask is None else attention_mask,
                          ro.prompt_width, ro.response_mask, tok.pad_token_id, packed=layout != "one-per-row")
    if layout == "block-mask":
        batch["varlen"] = False  # the packed rows under their block mask
    return batch


LAYOUTS = ["varlen", "block-mask", "one-per-row"]


def test_rollout_batch_lays_each_prompt_out_once(lm, tiny_model):
    ro, tok = _rollout(lm, tiny_model)
    lengths = ro.response_mask.sum(-1)
    assert len(set(lengths.tolist())) > 1  # responses of different lengths, so padding would exist
    batch = _batch(ro, tok, "varlen")
    assert int(batch["attention_mask"].sum()) == sum(map(len, PROMPTS)) + int(lengths.sum())
    assert batch["response_tokens"].tolist() == lengths.tolist()
    rows = _batch(ro, tok, "one-per-row")
    assert rows["input_ids"].shape[0] == ro.input_ids.shape[0]
    assert int(rows["attention_mask"].sum()) == int(ro.attention_mask.sum())
    # an empty prompt: its response's first token has no predictor and is not scored, in either layout
    empty = ro.attention_mask.clone()
    empty[0, : ro.prompt_width] = 0
    for layout in ("varlen", "one-per-row"):
        scored = torch.bincount(_batch(ro, tok, layout, empty)["score_seq"], minlength=len(lengths))
        assert scored.tolist() == [int(lengths[0]) - 1] + lengths[1:].tolist()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_logprobs_match_padded(lm, tiny_model, temperature, layout):
    ro, tok = _rollout(lm, tiny_model)
    batch = _batch(ro, tok, layout)
    with torch.no_grad():
        want = response_logprobs(lm, ro.input_ids, ro.attention_mask, ro.prompt_width, ro.response_mask,
                                 temperature=temperature) * ro.response_mask
        got = rollout_tokens(score(lm, batch, temperature=temperature).tokens, batch, ro.response_mask)
    assert got.shape == want.shape and (got[ro.response_mask == 0] == 0).all()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert want[ro.response_mask.bool()].abs().min() > 0  # every response token scored


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rollout_values_match_padded(lm, tiny_model, layout):
    """PPO's value estimates V_t (read where response token t is chosen) equal those of the padded rollout rows."""
    from transformers import AutoModelForSequenceClassification

    ro, tok = _rollout(lm, tiny_model)
    torch.manual_seed(0)  # the score head is newly initialised
    value = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1, dtype=torch.float32).eval()
    batch = _batch(ro, tok, layout)
    with torch.no_grad():
        want = response_values(value, ro.input_ids, ro.attention_mask, ro.prompt_width) * ro.response_mask
        got = rollout_tokens(score(value, batch, "values").values, batch, ro.response_mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert want[ro.response_mask.bool()].abs().min() > 0


def _same_curves(run, cfg_cls, modules, n_batches: int, tolerances: dict, tiny_model, tmp_path, monkeypatch, **kw):
    """Runs 4 steps packed and one sequence per row on a fixed seed; checks that `n_batches` batches went through
    `rollout_batch`, all packed or all not, and that the train metrics in `tolerances` agree within them."""
    packed = []

    def counting(*args, **kwargs):
        packed.append(kwargs["packed"])
        return rollout_batch(*args, **kwargs)

    for module in modules:
        monkeypatch.setattr(module, "rollout_batch", counting)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p["prompt"]} for p in synthetic_pairs(40, 3)])
    (tmp_path / "reward.py").write_text(REWARD_PY)
    curves = {}
    for packing in (True, False):
        out = tmp_path / f"packing-{packing}"
        run(cfg_cls(model=tiny_model, prompts=prompts, reward=f"{tmp_path / 'reward.py'}:score", output_dir=str(out),
                    max_steps=4, ppo_epochs=2, max_new_tokens=10, learning_rate=3e-3, eval_samples=0,
                    eval_fraction=0.0, progress=False, packing=packing, **kw))
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        curves[packing] = [m for m in lines if m["split"] == "train"]
        assert packed.count(packing) == n_batches and packed.count(not packing) == 0
        packed.clear()
    assert len(curves[True]) == 4
    for key, tol in tolerances.items():
        got, want = [m[key] for m in curves[True]], [m[key] for m in curves[False]]
        assert got == pytest.approx(want, abs=tol, rel=0), key
    assert curves[False][0]["loss"] != curves[False][-1]["loss"]


# the KL figures are means of sequence sums of ~30 log-probs of about -6 each: float32 rounding of such sums is
# ~1e-5, so they get 1e-4; losses, rewards and values 1e-5


def test_rloo_same_curve_packed_and_padded(tiny_model, tmp_path, monkeypatch):
    """Four RLOO steps: the same samples, rewards, KL and loss with packed and padded scoring and training (the
    reference and the policy both take the packed path: 4 scorings + 4 steps x 2 minibatches x 2 epochs)."""
    from alignkit.train import online

    _same_curves(run_rloo, RLOOConfig, (online,), 20,
                 {"loss": 1e-5, "reward": 1e-5, "rloo_reward": 1e-5, "kl": 1e-4, "approx_kl": 1e-4},
                 tiny_model, tmp_path, monkeypatch, batch_size=4, k=3, mini_batch_size=6)


def test_ppo_same_curve_packed_and_padded(tiny_model, tmp_path, monkeypatch):
    """Four PPO steps: the same losses (policy and value), rewards and KL with packed and padded reference scoring,
    value estimates and training (per step 1 scoring + 1 value pass + 2 minibatches x 2 epochs)."""
    from alignkit.train import online, ppo

    _same_curves(run_ppo, PPOConfig, (online, ppo), 24,
                 {"loss": 1e-5, "value_loss": 1e-5, "reward": 1e-5, "kl": 1e-4, "value_mean": 1e-5},
                 tiny_model, tmp_path, monkeypatch, batch_size=6, mini_batch_size=3)


@pytest.mark.parametrize("budget", [20, 45, 4096])
@pytest.mark.parametrize("packing", [True, False])
def test_sampler_scores_rollout_in_chunks(lm, tiny_model, budget, packing, monkeypatch):
    """The scoring of a rollout in chunks of whole prompt groups (at most `score_tokens` real tokens each, one group
    alone when it is larger) puts every row's log-probs and entropies back in its own row."""
    from types import SimpleNamespace

    from alignkit.losses import token_entropy
    from alignkit.train import online

    ro, tok = _rollout(lm, tiny_model)
    chunks = []
    monkeypatch.setattr(online, "rollout_batch", lambda *a, **k: chunks.append(a[0].shape[0]) or rollout_batch(*a, **k))
    sampler = SimpleNamespace(cfg=SimpleNamespace(score_tokens=budget, temperature=0.7, packing=packing), tok=tok)
    with torch.no_grad():
        got, ent = online.Sampler.score_rollout(sampler, lm, ro, entropy=True)
        want = response_logprobs(lm, ro.input_ids, ro.attention_mask, ro.prompt_width, ro.response_mask,
                                 temperature=0.7) * ro.response_mask
        logits = lm(input_ids=ro.input_ids, attention_mask=ro.attention_mask,
                    position_ids=(ro.attention_mask.cumsum(-1) - 1).clamp(min=0)).logits
        want_ent = token_entropy(logits[:, ro.prompt_width - 1 : -1] / 0.7) * ro.response_mask
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, want_ent, atol=1e-5, rtol=1e-5)
    # the 3 prompt groups (3 rows each) count 27, 17 and 32 prompt + response tokens: 20 -> a chunk per group
    # (each larger group alone), 45 -> groups 1+2 (44) and 3, 4096 -> one chunk
    assert chunks == {20: [3, 3, 3], 45: [6, 3], 4096: [9]}[budget]
