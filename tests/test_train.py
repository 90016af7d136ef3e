"""End to end on a tiny model built by the tests: every trainer runs from Python and from the CLI, writes a
model that reloads with `from_pretrained`, and learns the synthetic preference (clear signal)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from alignkit import CoHConfig, DPOConfig, RewardConfig, SFTConfig, run_coh, run_dpo, run_reward, run_sft
from alignkit.cli.main import main
from alignkit.data.collate import pad_rows
from alignkit.data.tokenize import Encoder
from alignkit.models.logprobs import sequence_logprobs
from alignkit.train.loop import latest_checkpoint, lr_factor, train
from alignkit.train.preference import build_dpo
from conftest import synthetic_pairs, write_jsonl

FAST = dict(batch_size=8, progress=False, warmup_ratio=0.0, seed=0)
LOSSES = ["dpo", "cdpo", "ipo", "hinge", "gdpo", "gipo"]


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def held_out_pairs(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def pair_logps(model_dir: str, pairs: list[dict]) -> torch.Tensor:
    """Summed response log-probs (chosen, rejected interleaved) under a model reloaded from its folder."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    enc = Encoder(tok, max_length=128, max_prompt_length=64)
    rows = [enc.encode(p["prompt"], p[k]) for p in pairs for k in ("chosen", "rejected")]
    b = pad_rows(rows, tok.pad_token_id)
    with torch.no_grad():
        return sequence_logprobs(model, b["input_ids"], b["attention_mask"], b["response_mask"])


def reloaded_preference_accuracy(model_dir: str, pairs: list[dict], reference_dir: str | None = None) -> float:
    """Share of pairs whose chosen response the reloaded model prefers: by implicit reward
    (log-ratio to the reference) when a reference is given, else by raw log-prob."""
    lp = pair_logps(model_dir, pairs)
    if reference_dir is not None:
        lp = lp - pair_logps(reference_dir, pairs)
    return float((lp[0::2] > lp[1::2]).float().mean())


# ---- SFT ---------------------------------------------------------------------------------------------------

def test_sft_python_learns_and_reloads(tiny_model, sft_files, tmp_path):
    train_file, eval_file = sft_files
    res = run_sft(SFTConfig(model=tiny_model, data=train_file, eval_data=eval_file, output_dir=str(tmp_path / "sft"),
                            learning_rate=2e-3, max_steps=40, **FAST))
    assert res.eval["loss"] < 0.6 * res.first_eval["loss"], (res.first_eval, res.eval)
    AutoModelForCausalLM.from_pretrained(tmp_path / "sft")
    lines = metrics(tmp_path / "sft")
    train_lines = [m for m in lines if m["split"] == "train"]
    assert len(train_lines) == 40
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "epoch"):
        assert key in train_lines[-1]
    saved = (tmp_path / "sft" / "config.yaml").read_text()
    assert "method: sft" in saved and "learning_rate: 0.002" in saved


def test_sft_cli_chat_messages(tiny_model, tmp_path):
    rows = [{"messages": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["chosen"]}]}
            for p in synthetic_pairs(96, 7)]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    code = main(["sft", "--model", tiny_model, "--data", data, "--output-dir", str(tmp_path / "out"),
                 "--max-steps", "25", "--learning-rate", "2e-3", "--no-progress", "--eval-fraction", "0.2"])
    assert code == 0
    evals = [m for m in metrics(tmp_path / "out") if m["split"] == "eval"]
    assert evals[-1]["loss"] < 0.7 * evals[0]["loss"]
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")


# ---- reward model ------------------------------------------------------------------------------------------

def test_reward_model_accuracy_and_hf_reload(tiny_model, pair_files, tmp_path):
    train_file, eval_file = pair_files
    out = tmp_path / "rm"
    res = run_reward(RewardConfig(model=tiny_model, data=train_file, eval_data=eval_file, output_dir=str(out),
                                  learning_rate=1e-3, max_steps=40, **FAST))
    assert res.eval["accuracy"] >= 0.9, res.eval
    # independent check through the plain transformers API, one unpadded sequence at a time
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out, num_labels=1).eval()
    # the stored offset is the mean raw reward over the responses of `offset_pairs` (default 128) training pairs
    # evenly spaced through the 256 (so offset-corrected rewards have mean 0 there): recompute it independently
    # from the reloaded model
    from alignkit.models.logprobs import reward_scores

    enc = Encoder(tok, max_length=512, max_prompt_length=256)
    train_pairs = held_out_pairs(train_file)
    assert len(train_pairs) == 256 and RewardConfig.model_fields["offset_pairs"].default == 128
    rows = [enc.encode(p["prompt"], p[k]) for p in train_pairs[::2] for k in ("chosen", "rejected")]
    b = pad_rows(rows, tok.pad_token_id)
    with torch.no_grad():
        raw = reward_scores(model, b["input_ids"], b["attention_mask"])
    assert model.config.alignkit_reward_offset == pytest.approx(float(raw.mean()), abs=5e-6)
    rows = [enc.encode(p["prompt"], p[k]) for p in train_pairs for k in ("chosen", "rejected")]
    b = pad_rows(rows, tok.pad_token_id)
    with torch.no_grad():
        everything = float(reward_scores(model, b["input_ids"], b["attention_mask"]).mean())
    assert abs(model.config.alignkit_reward_offset - everything) > 2e-5  # the check above tells the two apart
    wins = 0
    pairs = held_out_pairs(eval_file)
    with torch.no_grad():
        for p in pairs:
            s = [model(**tok(p["prompt"] + p[k] + tok.eos_token, return_tensors="pt")).logits.item()
                 for k in ("chosen", "rejected")]
            wins += s[0] > s[1]
    assert wins / len(pairs) >= 0.9


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_train_layers_freezes_all_below_the_top_blocks(arch, tiny_model, tiny_gpt2, pair_files, tmp_path):
    """--train-layers 1 on a 2-block model: the reward model still learns, the embeddings and block 0 come out
    bit-identical, block 1 and the final norm change."""
    start = tiny_model if arch == "llama" else tiny_gpt2
    train_file, eval_file = pair_files
    out = tmp_path / "rm"
    res = run_reward(RewardConfig(model=start, data=train_file, eval_data=eval_file, output_dir=str(out),
                                  learning_rate=1e-3, max_steps=40, train_layers=1, **FAST))
    assert res.eval["accuracy"] >= 0.75, res.eval
    before = AutoModelForSequenceClassification.from_pretrained(start, num_labels=1).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(out, num_labels=1).state_dict()
    block = "layers" if arch == "llama" else "h"
    changed = {k for k in after if k in before and not torch.equal(before[k], after[k])}
    assert not {k for k in changed if "embed" in k or ".wte." in k or ".wpe." in k or f".{block}.0." in k}, changed
    assert any(f".{block}.1." in k for k in changed) and any(k.endswith(("norm.weight", "ln_f.weight")) for k in changed)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_train_top_layers_trainable_set(arch, tiny_model, tiny_gpt2):
    """Exactly the top block, the final norm and the score head stay trainable in a reward model; a causal LM's
    head, tied to the frozen embeddings, is frozen with them."""
    from alignkit.models.load import load_causal_lm, load_reward_model, train_top_layers

    start, block, norm = (tiny_model, "layers", ".norm.") if arch == "llama" else (tiny_gpt2, "h", ".ln_f.")
    rm = load_reward_model(start)
    train_top_layers(rm, 1)
    names = [n for n, _ in rm.named_parameters()]
    expected = {n for n in names if f".{block}.1." in n or norm in n or n.startswith("score.")}
    assert any(n.startswith("score.") for n in expected) and any(norm in n for n in expected)
    assert {n for n, p in rm.named_parameters() if p.requires_grad} == expected
    lm = load_causal_lm(start)
    train_top_layers(lm, 1)
    assert not lm.get_output_embeddings().weight.requires_grad
    assert all(p.requires_grad == (f".{block}.1." in n or norm in n) for n, p in lm.named_parameters())


def test_train_layers_refused_with_lora(tiny_model, pair_files, tmp_path):
    with pytest.raises(ValueError, match="train_layers and lora"):
        DPOConfig(model=tiny_model, data=pair_files[0], output_dir=str(tmp_path), lora=True, train_layers=1)


def test_reward_model_rankings_cli(tiny_model, tmp_path):
    rows = []
    for p, q in zip(synthetic_pairs(96, 11), synthetic_pairs(96, 12), strict=True):
        mid = " " + " ".join(p["chosen"].split()[:2] + q["rejected"].split()[:2])
        rows.append({"prompt": p["prompt"], "responses": [p["chosen"], mid, p["rejected"]]})
    data = write_jsonl(tmp_path / "rank.jsonl", rows)
    code = main(["rm", "--model", tiny_model, "--data", data, "--output-dir", str(tmp_path / "rm"), "--max-steps", "30",
                 "--learning-rate", "1e-3", "--no-progress", "--eval-fraction", "0.25", "--batch-size", "4"])
    assert code == 0
    evals = [m for m in metrics(tmp_path / "rm") if m["split"] == "eval"]
    assert evals[-1]["accuracy"] >= 0.85, evals[-1]
    AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm", num_labels=1)


def test_reward_model_soft_labels(tiny_model, tmp_path):
    rows = [dict(p, label=0.8) for p in synthetic_pairs(128, 13)]
    rows += [dict(p, chosen=p["rejected"], rejected=p["chosen"], label=0.1) for p in synthetic_pairs(64, 14)]
    data = write_jsonl(tmp_path / "soft.jsonl", rows)
    out = tmp_path / "rm"
    res = run_reward(RewardConfig(model=tiny_model, data=data, output_dir=str(out), learning_rate=1e-3,
                                  max_steps=30, eval_fraction=0.2, **FAST))
    info = json.loads((out / "run_info.json").read_text())
    assert info["train_data"]["counts"]["flipped"] == 64  # label 0.1 pairs were flipped to 0.9 on load
    assert res.eval["accuracy"] >= 0.9


# ---- DPO family ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", LOSSES)
def test_dpo_every_loss_python(loss, tiny_model, pair_files, tmp_path):
    train_file, eval_file = pair_files
    lr = 1e-3
    beta = {"ipo": 0.5, "gipo": 0.5}.get(loss, 0.1)
    res = run_dpo(DPOConfig(model=tiny_model, data=train_file, eval_data=eval_file, output_dir=str(tmp_path / loss),
                            loss=loss, beta=beta, learning_rate=lr, max_steps=25, **FAST))
    assert res.first_eval["accuracy"] == 0.0  # policy == reference: no implicit-reward preference yet
    assert res.eval["accuracy"] >= 0.85, res.eval
    assert res.eval["margin"] > 0
    assert reloaded_preference_accuracy(str(tmp_path / loss), held_out_pairs(eval_file), tiny_model) >= 0.85


@pytest.mark.parametrize("loss", LOSSES)
def test_dpo_every_loss_cli(loss, tiny_model, pair_files, tmp_path):
    train_file, eval_file = pair_files
    out = tmp_path / loss
    code = main(["dpo", "--model", tiny_model, "--data", train_file, "--eval-data", eval_file, "--output-dir",
                 str(out), "--loss", loss, "--beta", "0.5", "--max-steps", "20", "--learning-rate", "1e-3",
                 "--no-progress", "--warmup-ratio", "0"])
    assert code == 0
    evals = [m for m in metrics(out) if m["split"] == "eval"]
    assert evals[0]["accuracy"] == 0.0 and evals[-1]["accuracy"] >= 0.8, evals[-1]
    AutoModelForCausalLM.from_pretrained(out)


def test_gdpo_soft_labels_at_half_do_not_move(tiny_model, tmp_path):
    """gdpo has zero gradient at p = 0.5: on all-0.5 data the policy stays the reference."""
    data = write_jsonl(tmp_path / "half.jsonl", [dict(p, label=0.5) for p in synthetic_pairs(32, 5)])
    res = run_dpo(DPOConfig(model=tiny_model, data=data, output_dir=str(tmp_path / "g"), loss="gdpo",
                            learning_rate=1e-3, max_steps=5, eval_fraction=0.25, **FAST))
    assert abs(res.eval["margin"]) < 1e-6 and abs(res.eval["loss"] - 0.693147) < 1e-5


def test_reference_modes_agree(tiny_model, pair_files, tmp_path):
    """precomputed, frozen copy and LoRA-disabled base give the same reference log-probs (same first step)."""
    train_file, _ = pair_files
    first = {}
    for mode in ("precomputed", "copy", "lora-disabled"):
        out = tmp_path / mode
        run_dpo(DPOConfig(model=tiny_model, data=train_file, output_dir=str(out), reference=mode, lora=True,
                          lora_r=8, learning_rate=1e-3, max_steps=3, eval_fraction=0.1, **FAST))
        first[mode] = metrics(out)
    for mode in ("copy", "lora-disabled"):
        for a, b in zip(first["precomputed"], first[mode], strict=True):
            for key in ("loss", "margin", "logp_chosen"):
                assert a[key] == pytest.approx(b[key], abs=1e-5), (mode, key)
    AutoModelForCausalLM.from_pretrained(tmp_path / "copy")  # LoRA saved merged: a plain model


def test_reference_cache_reused(tiny_model, pair_files, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    train_file, _ = pair_files
    for i in range(2):
        run_dpo(DPOConfig(model=tiny_model, data=train_file, output_dir=str(tmp_path / f"r{i}"), max_steps=1,
                          eval_fraction=0.1, **FAST))
    infos = [json.loads((tmp_path / f"r{i}" / "run_info.json").read_text()) for i in range(2)]
    assert [i["reference_logps"] for i in infos] == ["computed", "cache"]
    assert metrics(tmp_path / "r0")[0]["loss"] == metrics(tmp_path / "r1")[0]["loss"]


def test_reference_log_probs_in_the_run_precision(tiny_model, pair_files, tmp_path, monkeypatch):
    """Under bf16 the reference log-probs are computed under the same autocast as the policy's (with float32 ones,
    the first step's margin is bf16's rounding instead of 0: 9e-5 on this model). The cache tells precisions apart:
    a float32 run after a bf16 one computes its own, a second bf16 run reuses the first's."""
    import math

    from alignkit.train import preference

    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    seen = []
    real = preference.pair_logprobs

    def spy(model, batch):
        if torch.is_inference_mode_enabled():  # the reference pass (training steps run with gradients)
            seen.append(torch.is_autocast_enabled("cpu"))
        return real(model, batch)

    monkeypatch.setattr(preference, "pair_logprobs", spy)
    for name, precision, how in [("a", "bf16", "computed"), ("b", "no", "computed"), ("c", "bf16", "cache")]:
        seen.clear()
        run_dpo(DPOConfig(model=tiny_model, data=pair_files[0], output_dir=str(tmp_path / name), max_steps=1,
                          learning_rate=1e-12, eval_fraction=0.0, mixed_precision=precision, **FAST))
        assert json.loads((tmp_path / name / "run_info.json").read_text())["reference_logps"] == how, name
        assert seen == ([precision == "bf16"] * len(seen)) and (len(seen) > 0) == (how == "computed"), name
        first = metrics(tmp_path / name)[0]
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-3), name


# ---- Chain of Hindsight --------------------------------------------------------------------------------------

def coh_conditional_accuracy(model_dir: str, pairs: list[dict], positive: str) -> float:
    """Does the model, prompted with the positive feedback phrase, prefer the chosen response?"""
    pos = [dict(p, prompt=p["prompt"] + positive) for p in pairs]
    return reloaded_preference_accuracy(model_dir, pos)


def test_coh_python_learns(tiny_model, pair_files, tmp_path):
    train_file, eval_file = pair_files
    cfg = CoHConfig(model=tiny_model, data=train_file, eval_data=eval_file, output_dir=str(tmp_path / "coh"),
                    learning_rate=2e-3, max_steps=40, attention_drop=0.02, sft_weight=0.5, **FAST)
    res = run_coh(cfg)
    assert res.eval["coh_loss"] < 0.6 * res.first_eval["coh_loss"]
    assert coh_conditional_accuracy(str(tmp_path / "coh"), held_out_pairs(eval_file), cfg.positive) >= 0.9
    # the feedback phrase matters: the chosen-minus-rejected log-prob gap is larger after the positive phrase
    # than after the negative one for (almost) every held-out pair
    pairs = held_out_pairs(eval_file)
    gap = {}
    for phrase in (cfg.positive, cfg.negative):
        lp = pair_logps(str(tmp_path / "coh"), [dict(p, prompt=p["prompt"] + phrase) for p in pairs])
        gap[phrase] = lp[0::2] - lp[1::2]
    assert float((gap[cfg.positive] > gap[cfg.negative]).float().mean()) >= 0.9


def test_coh_cli(tiny_model, pair_files, tmp_path):
    train_file, eval_file = pair_files
    code = main(["coh", "--model", tiny_model, "--data", train_file, "--eval-data", eval_file, "--output-dir",
                 str(tmp_path / "coh"), "--max-steps", "25", "--learning-rate", "2e-3", "--no-progress"])
    assert code == 0
    evals = [m for m in metrics(tmp_path / "coh") if m["split"] == "eval"]
    assert evals[-1]["loss"] < 0.7 * evals[0]["loss"]
    AutoModelForCausalLM.from_pretrained(tmp_path / "coh")


# ---- checkpoints and resume ----------------------------------------------------------------------------------

def test_resume_matches_uninterrupted_run(tiny_model, pair_files, tmp_path):
    train_file, _ = pair_files
    common = dict(model=tiny_model, data=train_file, learning_rate=1e-3, max_steps=8, save_every=2,
                  eval_fraction=0.1, batch_size=8, progress=False, seed=0, gradient_accumulation_steps=2)
    full = DPOConfig(output_dir=str(tmp_path / "full"), **common)
    run_dpo(full)

    crashed = DPOConfig(output_dir=str(tmp_path / "crash"), **common)
    task = build_dpo(crashed)
    calls = {"n": 0}
    inner = task.loss

    def dying(model, batch):
        calls["n"] += model.training  # count training micro-batches only (evaluation also calls the loss)
        if calls["n"] == 11:  # mid-way through optimizer step 6 (2 micro-batches per step)
            raise RuntimeError("simulated crash")
        return inner(model, batch)

    task.loss = dying
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(task, crashed)
    assert latest_checkpoint(tmp_path / "crash").name == "checkpoint-4"
    (tmp_path / "crash" / ".checkpoint-6.tmp").mkdir()  # a half-written checkpoint is ignored
    assert latest_checkpoint(tmp_path / "crash").name == "checkpoint-4"
    run_dpo(crashed.model_copy(update={"resume": True}))

    a = AutoModelForCausalLM.from_pretrained(tmp_path / "full").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "crash").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    keys = ("step", "loss", "margin", "accuracy", "lr")
    strip = lambda ms: [{k: m.get(k) for k in keys} for m in ms]  # noqa: E731
    assert strip(metrics(tmp_path / "full")) == strip(metrics(tmp_path / "crash"))
    assert sorted(p.name for p in (tmp_path / "crash").glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]


def test_mixed_precision_reaches_the_model(tiny_model, sft_files, tmp_path):
    """--mixed-precision bf16 runs the model's matmuls in bfloat16 (autocast) in the training and evaluation
    steps, although the log-prob code calls the backbone itself, not the prepared model's forward; "no" keeps
    float32; "auto" runs as this machine's device decides, and says so in run_info.json. The runs share one
    Python process (accelerate's state must allow the change). The bf16 losses differ from the float32 ones (the
    numerics really changed) but only by bf16 rounding."""
    from alignkit.models.load import resolve_precision
    from alignkit.train.sft import build_sft

    train_file, eval_file = sft_files
    results = {}
    for precision in ("no", "bf16", "auto"):
        cfg = SFTConfig(model=tiny_model, data=train_file, eval_data=eval_file, output_dir=str(tmp_path / precision),
                        max_steps=2, mixed_precision=precision, **FAST)
        task = build_sft(cfg)
        seen: list[torch.dtype] = []
        task.model.model.layers[0].mlp.down_proj.register_forward_hook(
            lambda mod, inp, out, seen=seen: seen.append(out.dtype))
        res = train(task, cfg)
        ran = resolve_precision(precision)
        assert seen and set(seen) == {torch.bfloat16 if ran == "bf16" else torch.float32}, precision
        info = json.loads((tmp_path / precision / "run_info.json").read_text())
        assert info.get("mixed_precision") == (ran if precision == "auto" else None)
        assert all(p.dtype == torch.float32 for p in task.model.parameters())  # master weights stay float32
        results[precision] = (res.eval["loss"], [m["loss"] for m in metrics(tmp_path / precision)])
    (eval32, curve32), (eval16, curve16) = results["no"], results["bf16"]
    assert eval16 != eval32 and abs(eval16 - eval32) < 0.02 * eval32
    assert len(curve16) == len(curve32) and all(abs(a - b) < 0.02 * a for a, b in zip(curve32, curve16, strict=True))


def test_reward_offset_pass_runs_in_the_run_precision(tiny_model, pair_files, tmp_path):
    """The reward offset is the mean reward the trained model gives, in the precision it trained, was evaluated and
    will be used in: under bf16 the offset pass runs in autocast, in float32 without it."""
    from alignkit.train.loop import train
    from alignkit.train.reward import build_reward

    for precision in ("no", "bf16"):
        cfg = RewardConfig(model=tiny_model, data=pair_files[0], output_dir=str(tmp_path / precision), max_steps=2,
                           mixed_precision=precision, **FAST)
        task = build_reward(cfg)
        seen = []
        offset_pass = task.before_save
        task.before_save = lambda m, f=offset_pass, seen=seen: (seen.append(torch.is_autocast_enabled("cpu")), f(m))
        train(task, cfg)
        assert seen == [precision == "bf16"], precision


def test_auto_precision_is_bf16_only_where_the_device_has_it(monkeypatch):
    """--mixed-precision auto: bf16 on a CPU that reports AVX512-BF16 or AMX tiles, no on one that reports
    neither (where bf16 matmuls are emulated); an explicit choice is kept as given."""
    from alignkit.models.load import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for avx512_bf16, amx, expected in ((True, False, "bf16"), (False, True, "bf16"), (False, False, "no")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert resolve_precision("auto") == expected, (avx512_bf16, amx)
        assert resolve_precision("no") == "no" and resolve_precision("bf16") == "bf16"


def test_step_metrics_refuse_a_name_from_both_the_rollout_and_the_loss():
    """A method whose rollout and loss step report the same metric name would hide one of them in the logs."""
    from types import SimpleNamespace

    from alignkit.train.loop import Window, _step_metrics

    acc = SimpleNamespace(num_processes=1)
    window = Window()
    window.add({"loss": torch.tensor(1.0), "kl": torch.tensor(0.5)}, {"n": 2})
    metrics, _ = _step_metrics(acc, {"reward": 2.0}, window, 1.0, 0)
    assert metrics == {"reward": 2.0, "loss": 1.0, "kl": 0.5}
    with pytest.raises(ValueError, match="kl"):
        _step_metrics(acc, {"kl": 0.1, "reward": 2.0}, window, 1.0, 0)


def test_lr_schedules_by_hand_and_as_transformers_has_them():
    """The warm-up schedules: values worked out by hand (2 warm-up updates of 10), and every update's factor equal
    to transformers' `get_scheduler` (linear, cosine, constant_with_warmup) within float rounding."""
    from transformers import get_scheduler

    hand = {"linear": {0: 0.0, 1: 0.5, 2: 1.0, 6: 0.5, 9: 0.125, 10: 0.0},
            "cosine": {0: 0.0, 1: 0.5, 2: 1.0, 4: 0.5 * (1 + 0.5 ** 0.5), 6: 0.5, 10: 0.0},
            "constant": {0: 0.0, 1: 0.5, 2: 1.0, 10: 1.0}}
    for kind, values in hand.items():
        for update, want in values.items():
            assert lr_factor(update, kind=kind, warmup=2, total=10) == pytest.approx(want, abs=1e-12), (kind, update)
    assert lr_factor(0, kind="linear", warmup=0, total=5) == 1.0
    theirs = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
    for kind, name in theirs.items():
        for warmup, total in ((0, 7), (3, 40), (10, 10)):
            sched = get_scheduler(name, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
                                  num_warmup_steps=warmup, num_training_steps=total)
            ours = [lr_factor(u, kind=kind, warmup=warmup, total=total) for u in range(total + 1)]
            assert ours == pytest.approx([sched.lr_lambdas[0](u) for u in range(total + 1)], abs=1e-12), (kind, warmup)
