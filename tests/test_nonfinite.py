"""Non-finite losses, gradients and rewards: the run stops with a clear message (the last checkpoint kept, the
offending batch saved), or skips the step when asked."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit import DPOConfig, RLOOConfig, run_rloo
from alignkit.errors import AlignkitError
from alignkit.train.loop import latest_checkpoint, train
from alignkit.train.preference import build_dpo
from conftest import synthetic_pairs, write_jsonl


def _poisoned(cfg, at_step: int, kind: str):
    """The DPO task whose loss (kind "loss") or gradient (kind "grad", loss finite) is NaN at one step."""
    task = build_dpo(cfg)
    inner, calls = task.loss, {"n": 0}

    def loss(model, batch):
        value, metrics = inner(model, batch)
        if model.training:
            calls["n"] += 1
            if calls["n"] == at_step:
                if kind == "loss":
                    value = value * float("nan")
                else:  # d sqrt(x)/dx is infinite at 0: a finite loss with a NaN gradient
                    value = value + torch.sqrt(sum(p.sum() for p in model.parameters()) * 0)
        return value, metrics

    task.loss = loss
    return task


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_non_finite_step_stops_the_run_and_keeps_the_checkpoint(kind, tiny_model, pair_files, tmp_path):
    cfg = DPOConfig(model=tiny_model, data=pair_files[0], output_dir=str(tmp_path), batch_size=8, max_steps=6,
                    save_every=2, eval_fraction=0.0, progress=False, learning_rate=1e-3)
    what = "loss (nan)" if kind == "loss" else "gradient norm (nan)"
    with pytest.raises(AlignkitError, match=rf"non-finite {what.replace('(', '[(]').replace(')', '[)]')} at step 3"):
        train(_poisoned(cfg, 3, kind), cfg)
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"
    saved = torch.load(tmp_path / "nonfinite-step-3.pt")
    assert saved["n"] == 8 and saved["input_ids"].dtype == torch.long  # the offending micro-batch
    assert not (tmp_path / "config.json").exists()  # no final model written from a broken run


def test_skip_nonfinite_skips_only_that_step(tiny_model, pair_files, tmp_path):
    cfg = DPOConfig(model=tiny_model, data=pair_files[0], output_dir=str(tmp_path), batch_size=8, max_steps=5,
                    eval_fraction=0.0, progress=False, learning_rate=1e-3, skip_nonfinite=True)
    task = _poisoned(cfg, 2, "grad")
    result = train(task, cfg)
    assert result.steps == 5
    assert all(torch.isfinite(p).all() for p in task.model.parameters())  # the NaN gradient was never applied
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m.get("skipped_steps", 0) for m in lines] == [0, 1, 1, 1, 1]


def test_nan_reward_names_the_response(tiny_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p["prompt"]} for p in synthetic_pairs(32, 3)])
    common = dict(model=tiny_model, prompts=prompts, k=2, batch_size=4, max_steps=2, max_new_tokens=4,
                  output_dir=str(tmp_path / "out"), progress=False, eval_samples=0)
    # a reward function returning NaN
    (tmp_path / "reward.py").write_text("def score(prompts, responses):\n"
                                        "    return [float('nan') if i == 2 else 0.0 for i in range(len(responses))]\n")
    with pytest.raises(AlignkitError, match=r"reward\.py:score returned a non-finite score for response 2: "):
        run_rloo(RLOOConfig(reward=f"{tmp_path / 'reward.py'}:score", **common))
    # a reward model producing NaN
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    rm.config.pad_token_id = 0
    with torch.no_grad():
        rm.score.weight.fill_(float("nan"))
    rm.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "rm")
    with pytest.raises(AlignkitError, match=r"rm\) gave nan for 8 of 8 responses in this batch; the first: prompt "
                                            r"'Review of \w+:', response "):
        run_rloo(RLOOConfig(reward_model=str(tmp_path / "rm"), **common))
