"""Training throughput and peak memory of SFT, reward-model and DPO steps; prints one JSON object per setting.

    python benchmarks/train.py                        # every setting, each in a fresh process (own peak RSS)
    python benchmarks/train.py --setting tiny-dpo     # one setting
    python benchmarks/train.py --only tiny            # the settings whose name starts with "tiny"

Settings (names: <model>-<method>[-variant]):
- tiny-*: GPT-2 with 4 layers, width 256, a 2k BPE vocabulary trained on the data; 512 pairs whose responses
  have 4-120 words (`common.make_pairs`); batch 8 (pairs, or demonstrations = prompt + chosen for SFT); one
  epoch. DPO with the reference log-probs precomputed (default) or run live (`-live`); `-padded` turns
  packing off (each batch padded to its longest sequence), `-separate` packs without the shared prompt,
  `-masked` computes the packed rows with their block-diagonal mask instead of flat (`--no-varlen`),
  `tiny-rm-no-offset` skips the pass that stores the reward model's mean-zero offset (TRL has none).
- smollm2-*: SmolLM2-135M-Instruct (built in), 64 pairs of up to 128 tokens, batch 8, 8 optimizer steps;
  full fine-tuning or LoRA r=16 on all linear layers (`-lora`, reference = the adapter switched off, live).
Reported: examples/s of the training loop (median over steps, the first two left out when there are more than
four: they allocate gradients and optimizer state), end-to-end examples/s (load, reference pass,
training, saving), tokens/s (real tokens; a shared prompt counts once), wall seconds, peak RSS, and model-FLOPs
utilisation (MFU): useful model FLOPs per second against the matmul peak measured at the start of the same
process (float32, or bf16 for the `-bf16` settings, which train under bf16 autocast). Useful FLOPs per step = 6 x (parameters outside the embeddings and heads) x tokens +
6 x (hidden x vocabulary) x scored tokens (the LM head of SFT and DPO; a reward model's head is negligible);
4 instead of 6 with LoRA (no gradients for the frozen weights); 2 more per token for a live reference (forward
only); attention's own FLOPs are left out.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import (
    body_and_head_params,
    in_work_folder,
    make_pairs,
    matmul_peak_gflops,
    peak_rss_mb,
    tiny_gpt2,
)
from common import main as bench_main

TINY = dict(model="tiny", pairs=512, batch=8, max_steps=None, max_length=512)
SMOL = dict(model="smollm2-135m-instruct", pairs=64, batch=8, max_steps=8, max_length=128)
SETTINGS = {
    "tiny-sft": dict(TINY, method="sft"),
    "tiny-sft-padded": dict(TINY, method="sft", packing=False),
    "tiny-rm": dict(TINY, method="rm"),
    "tiny-rm-separate": dict(TINY, method="rm", shared_prompt=False),
    "tiny-rm-padded": dict(TINY, method="rm", packing=False),
    "tiny-dpo": dict(TINY, method="dpo", reference="precomputed"),
    "tiny-dpo-padded": dict(TINY, method="dpo", reference="precomputed", packing=False),
    "tiny-dpo-live": dict(TINY, method="dpo", reference="copy"),
    "tiny-dpo-live-separate": dict(TINY, method="dpo", reference="copy", shared_prompt=False),
    "tiny-dpo-live-padded": dict(TINY, method="dpo", reference="copy", packing=False),
    # packed rows with a block-diagonal mask instead of one flat row with attention per sequence (--no-varlen)
    "tiny-dpo-live-masked": dict(TINY, method="dpo", reference="copy", varlen=False),
    "tiny-rm-masked": dict(TINY, method="rm", varlen=False),
    # the work TRL's RewardTrainer does: no pass storing the mean-zero reward offset afterwards (--no-normalize)
    "tiny-rm-no-offset": dict(TINY, method="rm", normalize=False),
    "tiny-sft-masked": dict(TINY, method="sft", varlen=False),
    # bf16 autocast (`--mixed-precision bf16`; on CPUs with AMX/AVX512-BF16 its matmuls run several times faster);
    # MFU against the bf16 matmul peak; compare with trl_peer.py's -bf16 settings, not with the float32 ones
    "tiny-dpo-live-bf16": dict(TINY, method="dpo", reference="copy", precision="bf16"),
    "tiny-rm-bf16": dict(TINY, method="rm", precision="bf16"),
    "smollm2-sft": dict(SMOL, method="sft"),
    "smollm2-rm": dict(SMOL, method="rm"),
    "smollm2-dpo": dict(SMOL, method="dpo", reference="precomputed"),
    "smollm2-dpo-padded": dict(SMOL, method="dpo", reference="precomputed", packing=False),
    "smollm2-dpo-masked": dict(SMOL, method="dpo", reference="precomputed", varlen=False),
    "smollm2-dpo-lora": dict(SMOL, method="dpo", reference="lora-disabled", lora=True),
    "smollm2-dpo-bf16": dict(SMOL, method="dpo", reference="precomputed", precision="bf16"),
}


def useful_flops_per_step(model_dir: Path, method: str, tokens: float, scored: float, live_reference: bool,
                          lora: bool) -> float:
    """Model FLOPs of one optimizer step (see the module docstring)."""
    body, head = body_and_head_params(model_dir)
    head = head if method != "rm" else 0
    per_weight = 4 if lora else 6  # LoRA: no weight gradients for the frozen matrices (forward 2 + input grads 2)
    flops = per_weight * (body * tokens + head * scored)
    return flops + (2 * (body * tokens + head * scored) if live_reference else 0)


def run_setting(name: str) -> dict:
    return in_work_folder(measure, name)


def measure(name: str, work: Path) -> dict:
    import torch

    from alignkit import DPOConfig, RewardConfig, SFTConfig, run_dpo, run_reward, run_sft
    from alignkit.models.load import resolve_model

    s = SETTINGS[name]
    model = s["model"] if s["model"] == "tiny" else resolve_model(s["model"])  # converted by main() beforehand
    os.environ["ALIGNKIT_CACHE"] = str(work / "cache")  # then no reuse of cached reference log-probs
    pairs = make_pairs(s["pairs"], 0, *((4, 120) if s["model"] == "tiny" else (4, 60)))
    if s["method"] == "sft":
        rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs]
    else:
        rows = pairs
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if model == "tiny":
        model = tiny_gpt2(work / "model", pairs)
    common = dict(model=model, data=str(data), output_dir=str(work / "out"), batch_size=s["batch"],
                  max_steps=s["max_steps"], lora=s.get("lora", False), max_length=s["max_length"], max_prompt_length=64,
                  eval_fraction=0.0, progress=False, learning_rate=1e-5, packing=s.get("packing", True),
                  shared_prompt=s.get("shared_prompt", True), varlen=s.get("varlen", True),
                  mixed_precision=s.get("precision", "no"))
    if s["method"] == "dpo":
        common["reference"] = s["reference"]
    if s["method"] == "rm":
        common["normalize"] = s.get("normalize", True)
    run, cls = {"sft": (run_sft, SFTConfig), "rm": (run_reward, RewardConfig), "dpo": (run_dpo, DPOConfig)}[s["method"]]
    cfg = cls(**common)
    peak = matmul_peak_gflops(dtype="bfloat16" if s.get("precision") == "bf16" else "float32")
    t0 = time.perf_counter()
    run(cfg)
    wall = time.perf_counter() - t0
    steps = [json.loads(x) for x in (work / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if m["split"] == "train"]
    trained = len(steps) * s["batch"] if s["max_steps"] else s["pairs"]
    steps = steps[2:] if len(steps) > 4 else steps  # the first steps allocate gradients and optimizer state
    # scored tokens per token of the data, from the tokenised data (the same for every layout)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(work / "out")
    n = lambda t: len(tok(t)["input_ids"])  # noqa: E731
    resp_keys = ("completion",) if s["method"] == "sft" else ("chosen", "rejected")
    scored = sum(n(r[k]) for r in rows for k in resp_keys)
    prompts = sum(n(r["prompt"]) for r in rows) * (1 if s.get("shared_prompt", True) and s.get("packing", True)
                                                   or s["method"] == "sft" else 2)
    scored_share = scored / (scored + prompts)
    step_s = statistics.median(m["examples_per_s"] for m in steps)
    tokens_per_s = statistics.median(m["tokens_per_s"] for m in steps)
    live = s.get("reference") in ("copy", "lora-disabled")
    flops_per_s = useful_flops_per_step(work / "out", s["method"], tokens_per_s, tokens_per_s * scored_share, live,
                                        s.get("lora", False))
    unit = "pairs" if s["method"] != "sft" else "examples"
    return {
        "benchmark": "train", "setting": name, **s, "threads": torch.get_num_threads(), "steps": len(steps),
        f"train_{unit}_per_s": round(step_s, 2),
        "train_tokens_per_s": round(tokens_per_s, 1),
        f"end_to_end_{unit}_per_s": round(trained / wall, 2),
        "wall_s": round(wall, 1),
        "peak_rss_mb": peak_rss_mb(),
        "matmul_peak_gflops": peak, "model_gflops_per_s": round(flops_per_s / 1e9, 1),
        "mfu": round(flops_per_s / 1e9 / peak, 3),
    }


def convert_builtin(names: list[str]) -> None:
    """Convert the built-in model outside the measurement (its first load de-quantises a GGUF)."""
    if any(SETTINGS[n]["model"] != "tiny" for n in names):
        subprocess.run([sys.executable, "-c", "from alignkit.models.load import resolve_model as r; "
                        "r('smollm2-135m-instruct')"], check=True)


if __name__ == "__main__":
    bench_main(__doc__, __file__, SETTINGS, run_setting, convert_builtin)
