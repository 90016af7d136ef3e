"""Shared by the benchmark scripts: run each setting in a fresh process (own peak RSS) and print JSON lines."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from collections.abc import Callable


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main(doc: str, script: str, settings: dict, run_setting: Callable[[str], dict],
         before: Callable[[list[str]], None] | None = None) -> None:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=list(settings), help="run one setting in this process")
    args = ap.parse_args()
    names = [args.setting] if args.setting else list(settings)
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
