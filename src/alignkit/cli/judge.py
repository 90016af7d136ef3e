"""`alignkit judge`: label pairs or K-response sets with a language model as the judge, written as the files the
labeling app exports. Parsing and printing only: the judging is `alignkit.judges`'."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from alignkit.errors import AlignkitError

OUTPUTS = ("votes.jsonl", "soft_pairs.jsonl", "pairs.jsonl", "rankings.jsonl")
REPORT = "judge_report.json"


def add_judge_parser(sub) -> None:
    from alignkit.cli.main import add_config_flags
    from alignkit.judges.config import JudgeConfig

    p = sub.add_parser(
        "judge", help="label pairs or K-response sets with a language model as the judge",
        description="Show a judge (a local model, or a model behind an OpenAI-compatible server) every pair in both "
                    "orders under each rubric, read its probability of answering A or B, and write votes.jsonl, "
                    "soft_pairs.jsonl, pairs.jsonl (and rankings.jsonl for K-response sets) to --output-dir, the "
                    "files every trainer reads. Verdicts are cached on disk: an interrupted run resumes, a rerun "
                    "costs nothing. Pairs that carry labels are also scored against them (agreement).")
    add_config_flags(p, JudgeConfig)


def read_items(cfg):
    """(prompts, a, b, labels or None, sets or None) of the records in `cfg.data`."""
    from alignkit.data import iter_raw, load_pairs, load_rankings
    from alignkit.data.records import response_text

    fmt = cfg.data_format
    if fmt == "auto":
        for _, rec in iter_raw(cfg.data):
            fmt = "sets" if isinstance(rec, dict) and "responses" in rec and "chosen" not in rec else "auto"
            break
    if fmt == "sets":
        sets, report = load_rankings(cfg.data, skip_invalid=cfg.skip_invalid)
        print(report.summary(), file=sys.stderr)
        sets = sets[: cfg.max_records] if cfg.max_records else sets
        from alignkit.judges import set_pairs

        texts = [[response_text(r) for r in s.responses] for s in sets]
        pairs = set_pairs(texts)
        return ([sets[s].prompt for s, _, _ in pairs], [texts[s][i] for s, i, _ in pairs],
                [texts[s][j] for s, _, j in pairs], None, (sets, texts, pairs))
    records, report = load_pairs(cfg.data, format=fmt, skip_invalid=cfg.skip_invalid)
    print(report.summary(), file=sys.stderr)
    records = records[: cfg.max_records] if cfg.max_records else records
    return ([r.prompt for r in records], [response_text(r.chosen) for r in records], [response_text(r.rejected) for r in records],
            [r.label for r in records], None)


def _check_output(out: Path) -> None:
    """Refuse to write over label files that an earlier `alignkit judge` run did not write."""
    if (out / REPORT).exists():
        return
    theirs = [f for f in OUTPUTS if (out / f).exists()]
    if theirs:
        raise AlignkitError(f"--output-dir '{out}' already holds {', '.join(theirs)}, not written by alignkit judge; "
                            "choose another folder")


def run_judge(args) -> int:
    from alignkit.cli.sample import command_config
    from alignkit.judges.config import JudgeConfig

    cfg = command_config(JudgeConfig, args)
    from alignkit.judges import (
        agreement,
        check_judge,
        judge_name,
        judge_pairs,
        label_files,
        make_judge,
        open_cache,
        rank_sets,
    )

    rubrics = check_judge(cfg)
    out = Path(cfg.output_dir)
    _check_output(out)
    prompts, a, b, labels, sets = read_items(cfg)
    if not prompts:
        raise AlignkitError(f"'{cfg.data}' holds nothing to judge (no pair of two distinct non-empty responses)")

    from alignkit.console import quiet_model_libraries

    quiet_model_libraries()
    judge = make_judge(cfg)
    cache = open_cache(cfg, judge)
    print(f"judging {len(prompts)} pairs with {judge_name(cfg)}, "
          f"{len(rubrics)} rubric(s) x 2 orders; cache {cache.path}", file=sys.stderr)
    t0 = time.perf_counter()
    j = judge_pairs(judge, prompts, a, b, rubrics=rubrics, cache=cache, progress=cfg.progress)
    seconds = time.perf_counter() - t0
    rankings = None
    if sets is not None:
        records, texts, pairs = sets
        ranked = rank_sets(texts, pairs, j.p_a)
        rankings = [(rec.prompt, r) for rec, r in zip(records, ranked, strict=True)]
    files = label_files(prompts, a, b, j, rankings)
    report = {"judge": judge_name(cfg), "rubrics": [r.name for r in rubrics],
              "pairs": len(prompts), "counts": dict(j.counts), "position_consistency": j.consistency,
              "answer_mass": j.answer_mass, "seconds": seconds,
              "judgments_per_s": j.counts["judged"] / seconds if seconds > 0 else None,
              "written": {name: len(rows) for name, rows in files.items()}}
    if labels is not None:
        report["agreement"] = agreement(j.p_a, labels)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        with open(out / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (out / REPORT).write_text(json.dumps(report, indent=2))
    from alignkit.train.config import save_config

    save_config(cfg, out / "config.yaml", method="judge")
    print(j.summary())
    if j.counts["judged"]:
        print(f"{j.counts['judged']} new judgments in {seconds:.1f} s ({report['judgments_per_s']:.2f}/s)")
    if labels is not None:
        ag = report["agreement"]
        clear = f"{ag['accuracy_clear']:.3f} on {ag['clear_pairs']} clear pairs" if ag["clear_pairs"] else "no clear pairs"
        corr = f"{ag['correlation']:.3f}" if ag["correlation"] is not None else "n/a"
        print(f"agreement with the file's labels: accuracy {ag['accuracy']:.3f} over {ag['pairs']} pairs "
              f"({clear}); correlation {corr}")
    print(f"written to {out}: " + ", ".join(f"{name} {n}" for name, n in report["written"].items()))
    return 0
