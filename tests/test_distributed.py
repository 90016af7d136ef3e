"""Two CPU processes (torchrun, gloo) train DPO and SFT: every rank ends with the same weights, equal to a
single-process run with the same global batch and seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import synthetic_pairs, write_jsonl

SCRIPT = '''
import json, sys
import torch
from accelerate import PartialState
from alignkit import DPOConfig, SFTConfig
from alignkit.train.loop import train
from alignkit.train.preference import build_dpo
from alignkit.train.sft import build_sft

method, model, data, out, batch = sys.argv[1:6]
cls, build = {"dpo": (DPOConfig, build_dpo), "sft": (SFTConfig, build_sft)}[method]
cfg = cls(model=model, data=data, output_dir=out, batch_size=int(batch), max_steps=4, learning_rate=1e-3,
          eval_fraction=0.25, progress=False, seed=0, warmup_ratio=0.25)
task = build(cfg)
result = train(task, cfg)
state = PartialState()
torch.save(task.model.state_dict(), f"{out}/rank{state.process_index}.pt")
if state.is_main_process:
    json.dump({"train": result.train, "eval": result.eval, "world": state.num_processes}, open(f"{out}/result.json", "w"))
'''


def _run(cmd: list[str], cwd) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("method", ["dpo", "sft"])
def test_two_processes_match_one(method, tiny_model, tmp_path):
    pairs = synthetic_pairs(64, 5)
    if method == "sft":  # completions of different lengths: the token mean must be taken over the global batch
        rows = [{"prompt": p["prompt"], "completion": p["chosen"] * (1 + i % 3)} for i, p in enumerate(pairs)]
    else:
        rows = pairs
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, str(script), method, tiny_model, data, str(one), "8"], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), method,
          tiny_model, data, str(two), "4"], tmp_path)

    ranks = [torch.load(two / f"rank{r}.pt") for r in (0, 1)]
    single = torch.load(one / "rank0.pt")
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    moved = max(float((single[k] - start[k]).abs().max()) for k in single)
    assert moved > 1e-3  # training changed the weights
    for k in single:
        assert torch.equal(ranks[0][k], ranks[1][k]), k  # identical on both ranks
        torch.testing.assert_close(ranks[0][k], single[k], atol=2e-5, rtol=1e-4)
    r1, r2 = (json.loads((d / "result.json").read_text()) for d in (one, two))
    assert (r1["world"], r2["world"]) == (1, 2)
    for split in ("train", "eval"):
        for k in ("loss",):
            assert r2[split][k] == pytest.approx(r1[split][k], abs=1e-4, rel=1e-4), (split, k)
    # the saved model is the trained one
    saved = AutoModelForCausalLM.from_pretrained(two).state_dict()
    for k in saved:
        torch.testing.assert_close(saved[k], ranks[0][k], atol=0, rtol=0)
