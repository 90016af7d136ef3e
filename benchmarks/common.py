"""Shared by the benchmark scripts: run each setting in a fresh process (own peak RSS) and print JSON lines."""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

WORDS = ("the film story actor scene music plot camera light dark long short slow fast warm cold old new "
         "good bad great poor fine dull bright quiet loud simple clever funny sad kind cruel brave calm wild "
         "river city night day summer winter house road friend mother father child king queen war peace").split()


def make_pairs(n: int, seed: int, min_words: int, max_words: int) -> list[dict]:
    import random

    rng = random.Random(seed)

    def text(k):
        return " " + " ".join(rng.choice(WORDS) for _ in range(k)) + "."

    return [{"prompt": "Write about" + text(rng.randint(3, 12)), "chosen": text(rng.randint(min_words, max_words)),
             "rejected": text(rng.randint(min_words, max_words))} for _ in range(n)]


def tiny_gpt2(path: Path, pairs: list[dict]) -> str:
    """The tiny benchmark model: GPT-2 with 4 layers, width 256 and a 2k BPE vocabulary trained on the pairs."""
    from alignkit.models.tiny import make_tiny_model

    texts = [p[k] for p in pairs for k in ("prompt", "chosen", "rejected")]
    return make_tiny_model(path, texts, arch="gpt2", vocab_size=2048, hidden_size=256, num_layers=4)


def matmul_peak_gflops(n: int = 1024, seconds: float = 2.0, dtype: str = "float32") -> float:
    """This machine's measured matmul throughput in `dtype` (GFLOP/s, best of repeated n x n products with the
    current torch threads): the denominator of model-FLOPs utilisation, measured in the same run."""
    import time

    import torch

    a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
    for _ in range(3):
        a @ b  # warm-up
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return round(best, 1)


def body_and_head_params(model_dir) -> tuple[int, int]:
    """(parameters outside the embeddings and the LM head, hidden x vocabulary) of a causal LM folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    emb = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) for p in m.parameters()}
    pos = getattr(model, "transformer", None)  # GPT-2's learned positions are a lookup too
    if pos is not None and hasattr(pos, "wpe"):
        emb |= {id(p) for p in pos.wpe.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in emb), cfg.hidden_size * cfg.vocab_size


def in_work_folder(measure: Callable[[str, Path], dict], name: str) -> dict:
    """`measure(name, work)` with `work` a fresh temporary folder, removed afterwards (a SmolLM2 setting writes
    ~1 GB of checkpoints and cache there)."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        return measure(name, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main(doc: str, script: str, settings: dict, run_setting: Callable[[str], dict],
         before: Callable[[list[str]], None] | None = None) -> None:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=list(settings), help="run one setting in this process")
    ap.add_argument("--only", default="", help="run the settings whose name starts with this")
    args = ap.parse_args()
    names = [args.setting] if args.setting else [n for n in settings if n.startswith(args.only)]
    if before is not None:
        before(names)
    if args.setting:
        print(json.dumps(run_setting(args.setting)), flush=True)
        return
    for name in names:
        r = subprocess.run([sys.executable, script, "--setting", name], capture_output=True, text=True)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        print(lines[-1] if lines else json.dumps({"setting": name, "error": r.stderr.strip().splitlines()[-1:]}),
              flush=True)
