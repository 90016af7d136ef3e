"""DPO training throughput and peak memory; prints one JSON object per setting.

    python benchmarks/dpo.py                   # every setting, each in a fresh process (own peak RSS)
    python benchmarks/dpo.py --setting tiny    # one setting

Settings:
- tiny: GPT-2 with 4 layers, width 256, a 2k BPE vocabulary trained on the data; 512 pairs whose responses
  have 4-120 words; batch 8; one epoch; reference log-probs precomputed (default) or live ("tiny-live").
- smollm2-lora / smollm2-full: SmolLM2-135M-Instruct (built-in), 32 pairs of up to 128 tokens, batch 8,
  4 optimizer steps, LoRA r=16 on all linear layers or full fine-tuning.
Reported: pairs/s of the training loop (median over steps), end-to-end pairs/s (load, reference pass, training,
saving), tokens/s, wall seconds, peak RSS, and model-FLOPs utilisation: tokens/s x 6N (+2N for a live
reference) against the float32 matmul peak measured at the start of the same process.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import main as bench_main
from common import make_pairs, matmul_peak_gflops, model_flops_per_token, peak_rss_mb, tiny_gpt2

SETTINGS = {
    "tiny": dict(model="tiny", pairs=512, batch=8, reference="precomputed", max_steps=None, max_length=512),
    "tiny-live": dict(model="tiny", pairs=512, batch=8, reference="copy", max_steps=None, max_length=512),
    "smollm2-lora": dict(model="smollm2-135m-instruct", pairs=32, batch=8, reference="lora-disabled", max_steps=4,
                         max_length=128, lora=True),
    "smollm2-full": dict(model="smollm2-135m-instruct", pairs=32, batch=8, reference="precomputed", max_steps=4,
                         max_length=128),
}


def run_setting(name: str) -> dict:
    from alignkit import DPOConfig, run_dpo
    from alignkit.models.load import resolve_model

    s = SETTINGS[name]
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    model = s["model"] if s["model"] == "tiny" else resolve_model(s["model"])  # converted by main() beforehand
    os.environ["ALIGNKIT_CACHE"] = str(work / "cache")  # no reuse of cached reference log-probs
    words = (4, 120) if s["model"] == "tiny" else (4, 60)
    pairs = make_pairs(s["pairs"], 0, *words)
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    if model == "tiny":
        model = tiny_gpt2(work / "model", pairs)
    cfg = DPOConfig(model=model, data=str(data), output_dir=str(work / "out"), batch_size=s["batch"],
                    max_steps=s["max_steps"], reference=s["reference"], lora=s.get("lora", False),
                    max_length=s["max_length"], max_prompt_length=64, eval_fraction=0.0, progress=False,
                    learning_rate=1e-5)
    peak = matmul_peak_gflops()
    t0 = time.perf_counter()
    run_dpo(cfg)
    wall = time.perf_counter() - t0
    steps = [json.loads(x) for x in (work / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if m["split"] == "train"]
    trained = sum(1 for _ in steps) * s["batch"] if s["max_steps"] else s["pairs"]
    import torch
    from transformers import AutoModelForCausalLM

    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(work / "out").parameters())
    tokens_per_s = statistics.median(m["tokens_per_s"] for m in steps)
    flops = model_flops_per_token(n_params, live_reference=s["reference"] != "precomputed")
    return {
        "benchmark": "dpo", "setting": name, **{k: v for k, v in s.items()}, "threads": torch.get_num_threads(),
        "steps": len(steps),
        "train_pairs_per_s": round(statistics.median(m["examples_per_s"] for m in steps), 2),
        "train_tokens_per_s": round(statistics.median(m["tokens_per_s"] for m in steps), 1),
        "end_to_end_pairs_per_s": round(trained / wall, 2),
        "wall_s": round(wall, 1),
        "peak_rss_mb": peak_rss_mb(),
        "params": n_params, "model_gflops_per_token": round(flops / 1e9, 3), "matmul_peak_gflops": peak,
        "mfu": round(tokens_per_s * flops / 1e9 / peak, 3),
    }


def convert_builtin(names: list[str]) -> None:
    """Convert the built-in model outside the measurement (its first load de-quantises a GGUF)."""
    if any(SETTINGS[n]["model"] != "tiny" for n in names):
        subprocess.run([sys.executable, "-c", "from alignkit.models.load import resolve_model as r; "
                        "r('smollm2-135m-instruct')"], check=True)


if __name__ == "__main__":
    bench_main(__doc__, __file__, SETTINGS, run_setting, convert_builtin)
