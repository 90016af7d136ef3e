"""How long the CLI takes to answer without training: `--help`, a command's `--help`, and refusals of bad input
(a bad flag value, a bad data record, a missing model, a bad demo setting), each a fresh `alignkit` process, as a
user runs it. Also `python -c "import torch, transformers"` as the floor any command that trains has to pay.

    python benchmarks/startup.py [--repeats 5]

Prints one JSON line per command: the median and the spread of its wall times (warm disk cache: one unmeasured
run first), and its exit code."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def commands(work: Path, alignkit: str) -> dict[str, list[str]]:
    bad = work / "bad.jsonl"
    bad.write_text('{"prompt": "Review:", "chosen": " good.", "rejected": " good."}\n')
    model = work / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text('{"model_type": "llama", "max_position_embeddings": 1024}')
    out = str(work / "out")
    return {
        "help": [alignkit, "--help"],
        "dpo-help": [alignkit, "dpo", "--help"],
        "bad-flag-value": [alignkit, "dpo", "--model", str(model), "--data", str(bad), "--output-dir", out,
                           "--warmup-ratio", "2"],
        "bad-record": [alignkit, "dpo", "--model", str(model), "--data", str(bad), "--output-dir", out],
        "missing-model": [alignkit, "sft", "--model", str(work / "nope"), "--data", str(bad), "--output-dir", out],
        "demo-unknown-method": [alignkit, "demo", "--methods", "dpo,nope", "--output-dir", out],
        "import-torch-transformers": [sys.executable, "-c", "import torch, transformers"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    alignkit = shutil.which("alignkit") or str(Path(sys.executable).with_name("alignkit"))
    with tempfile.TemporaryDirectory(prefix="alignkit-startup-") as tmp:
        for name, cmd in commands(Path(tmp), alignkit).items():
            subprocess.run(cmd, capture_output=True)  # warm the disk cache
            times, code = [], None
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                code = subprocess.run(cmd, capture_output=True).returncode
                times.append(time.perf_counter() - t0)
            print(json.dumps({"command": name, "median_s": round(statistics.median(times), 3),
                              "min_s": round(min(times), 3), "max_s": round(max(times), 3), "exit": code,
                              "repeats": args.repeats}), flush=True)


if __name__ == "__main__":
    main()
