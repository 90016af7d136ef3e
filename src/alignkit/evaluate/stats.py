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


def length_controlled_win_rate(p: Sequence[float], length_diff: Sequence[float], *, iters: int = 50,
                               ridge: float = 1e-6) -> float:
    """The win rate a judge would give at equal length: σ(θ₀) of the logistic regression
    logit P(win) = θ₀ + θ₁·tanh(Δ / s_Δ), fitted by maximum likelihood (Newton's method, a `ridge` on both
    weights for stability) to the judge's probabilities `p` as soft outcomes, where Δ is the policy's response
    length minus the reference's and s_Δ its standard deviation. AlpacaEval 2's length control (Dubois et al.
    2024), without its per-instruction term. With no spread in Δ it is the plain mean of `p`."""
    n = len(p)
    if n == 0 or len(length_diff) != n:
        raise ValueError("length_controlled_win_rate needs two equally long, non-empty lists")
    mean_d = sum(length_diff) / n
    sd = math.sqrt(sum((d - mean_d) ** 2 for d in length_diff) / n)
    if sd == 0:
        return sum(p) / n
    xs = [math.tanh(d / sd) for d in length_diff]
    t0 = t1 = 0.0
    for _ in range(iters):
        g0 = g1 = 0.0
        h00, h01, h11 = ridge, 0.0, ridge
        for y, x in zip(p, xs, strict=True):
            q = 1.0 / (1.0 + math.exp(-(t0 + t1 * x)))
            w = q * (1.0 - q)
            g0 += y - q
            g1 += (y - q) * x
            h00 += w
            h01 += w * x
            h11 += w * x * x
        g0 -= ridge * t0
        g1 -= ridge * t1
        det = h00 * h11 - h01 * h01
        d0, d1 = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        t0, t1 = t0 + d0, t1 + d1
        if abs(d0) + abs(d1) < 1e-12:
            break
    return 1.0 / (1.0 + math.exp(-t0))
