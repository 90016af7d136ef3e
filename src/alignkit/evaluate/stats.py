"""Statistics for evaluation: means with confidence intervals, win rates, reward-model agreement with gold.

Pure functions over plain Python floats (no models), so they are easy to check by hand."""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def mean_ci(values: Sequence[float], z: float = Z95) -> tuple[float, float]:
    """(mean, half-width of the normal-approximation confidence interval z·s/√n), s the sample std (n−1)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return mean, float("inf")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, z * math.sqrt(var / n)


def win_rate(policy: Sequence[float], reference: Sequence[float], tie: float = 1e-9) -> float:
    """Share of prompts where the policy's gold score beats the reference's on the same prompt; ties
    (|difference| <= tie) count one half."""
    if len(policy) != len(reference) or not policy:
        raise ValueError("win_rate needs two equally long, non-empty score lists (same prompts, same order)")
    wins = sum(1.0 if p - r > tie else 0.5 if abs(p - r) <= tie else 0.0
               for p, r in zip(policy, reference, strict=True))
    return wins / len(policy)


def paired_difference(policy: Sequence[float], reference: Sequence[float], z: float = Z95) -> tuple[float, float]:
    """(mean, 95% half-width) of the per-prompt differences policy − reference. The two lists hold one value per
    prompt in the same order (each model's mean over its samples of that prompt); pairing by prompt removes the
    prompt-to-prompt spread that two independent intervals both carry."""
    if len(policy) != len(reference) or not policy:
        raise ValueError("paired_difference needs two equally long, non-empty lists (same prompts, same order)")
    return mean_ci([p - r for p, r in zip(policy, reference, strict=True)], z)


def pairwise_agreement(model_scores: Sequence[float], gold_scores: Sequence[float],
                       groups: Sequence[int], tie: float = 1e-9, min_gap: float = 0.0) -> tuple[float, int]:
    """Held-out accuracy of a reward model against gold preferences: over every pair of responses to the same
    prompt (same `groups` id) whose gold scores differ (by at least `min_gap`, when given), the share the model
    orders the same way. Returns (accuracy, number of pairs)."""
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    agree = total = 0
    for idx in by_group.values():
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                i, j = idx[a], idx[b]
                dg = gold_scores[i] - gold_scores[j]
                if abs(dg) <= tie or abs(dg) < min_gap:
                    continue
                total += 1
                agree += (model_scores[i] - model_scores[j]) * dg > 0
    return (agree / total if total else float("nan")), total
