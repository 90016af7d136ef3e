"""The local judge measured: its agreement with reference labels on real data, and its speed against a plain batched
forward pass of the same model. Prints one JSON line per measurement.

    python benchmarks/judge.py --judge smollm2-135m-instruct --data ../shared/data --pairs 200
    python benchmarks/judge.py --speed-only --samples runs/demo/labels/samples.jsonl

- hh: HH-RLHF harmless-base test, the harmless rubric: accuracy of "chosen is better".
- alpaca: AlpacaEval 2 soft labels (GPT-4-turbo's, P(output_2 better)), the helpful rubric: the correlation
  with the soft label and the accuracy on pairs whose label is at least 0.75.
- speed: pairs of 32-token responses (the demo's SmolLM2 samples, or made-up ones), both orders: judgments and
  tokens per second, beside the tokens per second of the model's own forward on the same inputs, padded in
  batches of 16 sorted by length (logits at every position, as a plain forward computes them).
The verdict cache is a fresh temporary file: every judgment is computed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path


def _judge_data(judge, cache_path, prompts, a, b, labels, rubric: str, name: str) -> dict:
    from alignkit.judges import VerdictCache, agreement, judge_pairs, load_rubric

    t0 = time.perf_counter()
    j = judge_pairs(judge, prompts, a, b, rubrics=[load_rubric(rubric)], cache=VerdictCache(cache_path), progress=False)
    seconds = time.perf_counter() - t0
    return {"data": name, "rubric": rubric, **agreement(j.p_a, labels), "position_consistency": j.consistency,
            "answer_mass": j.answer_mass, "seconds": round(seconds, 1),
            "pairs_per_s": round(len(prompts) / seconds, 3), "truncated_inputs": judge.enc.counts["prompt_truncated"]}


def _sample(records, n: int, seed: int) -> list:
    rng = random.Random(seed)
    return rng.sample(records, min(n, len(records)))


def speed(judge, pairs: list[tuple], repeats: int = 2) -> dict:
    """Judgments/s and input tokens/s of the judge (both orders), against a plain padded forward of the same
    inputs (16 a batch, sorted by length)."""
    import torch

    from alignkit.judges import VerdictCache, judge_pairs, load_rubric

    rubric = load_rubric("helpful")
    texts = [rubric.fill(p, x, y) for p, x, y in pairs] + [rubric.fill(p, y, x) for p, x, y in pairs]
    ids = sorted((judge.prompt_ids(t) for t in texts), key=len)
    tokens = sum(map(len, ids))
    pad = judge.tok.pad_token_id
    best_judge = best_plain = float("inf")
    for r in range(repeats):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            judge_pairs(judge, [p for p, _, _ in pairs], [x for _, x, _ in pairs], [y for _, _, y in pairs],
                        rubrics=[rubric], cache=VerdictCache(Path(d) / f"c{r}.jsonl"), progress=False)
            best_judge = min(best_judge, time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(ids), 16):
                rows = ids[i : i + 16]
                width = max(map(len, rows))
                x = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
                m = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
                judge.model(input_ids=x, attention_mask=m)
        best_plain = min(best_plain, time.perf_counter() - t0)
    return {"data": "speed", "pairs": len(pairs), "judgments": 2 * len(pairs), "input_tokens": tokens,
            "judge_seconds": round(best_judge, 2), "plain_forward_seconds": round(best_plain, 2),
            "pairs_per_s": round(len(pairs) / best_judge, 2), "judge_tokens_per_s": round(tokens / best_judge),
            "plain_tokens_per_s": round(tokens / best_plain), "ratio": round(best_plain / best_judge, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--judge", default="smollm2-135m-instruct")
    ap.add_argument("--data", default="../shared/data", help="the shared data folder (hh-rlhf, alpaca-eval-soft)")
    ap.add_argument("--pairs", type=int, default=200, help="pairs sampled from each data set")
    ap.add_argument("--max-length", type=int, default=1536, help="longest judge input in tokens (the end is kept)")
    ap.add_argument("--samples", help="samples.jsonl of a demo run (prompt, response): speed on its responses")
    ap.add_argument("--speed-pairs", type=int, default=96)
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from alignkit.console import quiet_model_libraries
    from alignkit.data import load_pairs
    from alignkit.data.records import response_text
    from alignkit.judges.local import LocalJudge

    quiet_model_libraries()
    judge = LocalJudge(args.judge, max_length=args.max_length)
    tmp = Path(tempfile.mkdtemp())
    if not args.speed_only:
        data = Path(args.data)
        hh, _ = load_pairs(str(data / "hh-rlhf" / "harmless-base-test.jsonl.gz"))
        hh = _sample(hh, args.pairs, args.seed)
        print(json.dumps(_judge_data(judge, tmp / "hh.jsonl", [p.prompt for p in hh], [response_text(p.chosen) for p in hh],
                                     [response_text(p.rejected) for p in hh], [p.label for p in hh], "harmless", "hh-rlhf")),
              flush=True)
        ae, _ = load_pairs(str(data / "alpaca-eval-soft" / "annotations.jsonl.gz"))
        ae = _sample(ae, args.pairs, args.seed)
        print(json.dumps(_judge_data(judge, tmp / "ae.jsonl", [p.prompt for p in ae], [response_text(p.chosen) for p in ae],
                                     [response_text(p.rejected) for p in ae], [p.label for p in ae], "helpful", "alpaca-eval")),
              flush=True)
    if args.samples:
        rows = [json.loads(x) for x in Path(args.samples).read_text().splitlines()]
        by_prompt: dict[str, list] = {}
        for r in rows:
            by_prompt.setdefault(json.dumps(r["prompt"]), []).append(r)
        pairs = [(g[0]["prompt"], g[0]["response"], g[1]["response"]) for g in by_prompt.values() if len(g) >= 2]
    else:
        rng = random.Random(args.seed)
        words = "the film was good bad long dull bright warm clever funny sad slow fast loud quiet".split()
        pairs = [(f"Review film {i}.", " ".join(rng.choice(words) for _ in range(24)),
                  " ".join(rng.choice(words) for _ in range(24))) for i in range(args.speed_pairs)]
    print(json.dumps(speed(judge, pairs[: args.speed_pairs])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
