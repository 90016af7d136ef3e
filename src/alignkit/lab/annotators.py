"""A simulated panel of annotators that judge pairs by a gold score with Bradley-Terry noise.

Each annotator prefers response a with probability σ((g_a − g_b) / noise), independently, where g is the gold
score; `noise` → 0 gives a perfect judge, large `noise` a coin flip. The output records use the "votes"
format (`prompt`, `response_a`, `response_b`, `votes`), the same file format as labels collected from
people, so `load_pairs(..., format="votes")` turns them into hard labels (majority) and soft labels (vote
share) with agreement statistics.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def vote_probability(gold_a: float, gold_b: float, noise: float) -> float:
    """P(an annotator prefers a) = σ((g_a − g_b) / noise)."""
    if noise <= 0:
        return 1.0 if gold_a > gold_b else 0.0 if gold_a < gold_b else 0.5
    x = (gold_a - gold_b) / noise
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def simulate_votes(gold_a: float, gold_b: float, *, annotators: int, noise: float, rng: random.Random) -> list[str]:
    """One vote ("a" or "b") per annotator."""
    p = vote_probability(gold_a, gold_b, noise)
    return ["a" if rng.random() < p else "b" for _ in range(annotators)]


def annotate_pairs(prompts: Sequence, responses_a: Sequence[str], responses_b: Sequence[str],
                   gold_a: Sequence[float], gold_b: Sequence[float], *, annotators: int = 5, noise: float = 0.1,
                   seed: int = 0) -> list[dict]:
    """Votes records for a list of pairs (see the module docstring)."""
    if annotators < 1:
        raise ValueError("annotators must be >= 1")
    rng = random.Random(seed)
    return [
        {"prompt": p, "response_a": a, "response_b": b,
         "votes": simulate_votes(ga, gb, annotators=annotators, noise=noise, rng=rng),
         "gold_a": ga, "gold_b": gb}
        for p, a, b, ga, gb in zip(prompts, responses_a, responses_b, gold_a, gold_b, strict=True)
    ]


def annotate_groups(prompts: Sequence, groups: Sequence[Sequence[str]], golds: Sequence[Sequence[float]], *,
                    annotators: int = 5, noise: float = 0.1, seed: int = 0) -> tuple[list[dict], list[dict], int]:
    """Votes records from K responses per prompt: the panel votes on every pair of distinct non-empty
    responses. Returns (best-vs-worst records, every-pair records, prompts skipped). The best-vs-worst pair is
    the panel's best against its worst (most and fewest votes won over all pairs; ties go to the earlier
    response), with the votes cast on that pair; with K=2 it is the one pair. Every record is in random a/b
    order. A prompt is skipped when it has fewer than two distinct non-empty responses."""
    rng = random.Random(seed)
    records, every, skipped = [], [], 0

    def record(prompt, responses, gold, a, b, v):
        if rng.random() < 0.5:  # random presentation order
            a, b, v = b, a, ["b" if x == "a" else "a" for x in v]
        return {"prompt": prompt, "response_a": responses[a], "response_b": responses[b], "votes": v,
                "gold_a": gold[a], "gold_b": gold[b]}

    for prompt, responses, gold in zip(prompts, groups, golds, strict=True):
        keep = [i for i, r in enumerate(responses) if r.strip() and r not in responses[:i]]
        if len(keep) < 2:
            skipped += 1
            continue
        wins = dict.fromkeys(keep, 0)
        votes = {}
        for x, i in enumerate(keep):
            for j in keep[x + 1:]:
                v = simulate_votes(gold[i], gold[j], annotators=annotators, noise=noise, rng=rng)
                votes[i, j] = v
                wins[i] += v.count("a")
                wins[j] += v.count("b")
        best = max(keep, key=lambda i: (wins[i], -i))
        worst = min(keep, key=lambda i: (wins[i], -i))
        a, b = sorted((best, worst))
        records.append(record(prompt, responses, gold, a, b, votes[a, b]))
        every += [record(prompt, responses, gold, a, b, v) for (a, b), v in votes.items()]
    return records, every, skipped
