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
