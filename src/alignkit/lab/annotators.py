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


def judge_groups(settings, prompts: Sequence, groups: Sequence[Sequence[str]], golds: Sequence[Sequence[float]], *,
                 seed: int = 0, progress: bool = True) -> tuple[list[dict], list[dict], int]:
    """`annotate_groups` with a language model as the annotator (`judges`, `settings` a JudgeSettings): it judges
    every pair of a prompt's distinct non-empty responses in both orders under each rubric and casts one vote per
    rubric, for the side its mean probability over the two orders prefers (a judge biased towards one position
    would otherwise vote once for each side, a tie); the record keeps that probability as `p_a`. The best-vs-worst
    pair is the judge's best against its worst by summed probability of winning (`rank_sets`). Records as
    `annotate_groups` gives them, gold kept for diagnostics, in random a/b order."""
    from alignkit.judges import check_judge, judge_pairs, make_judge, open_cache, rank_sets, set_pairs

    rubrics = check_judge(settings)
    judge = make_judge(settings)
    pairs = set_pairs(groups)
    j = judge_pairs(judge, [prompts[s] for s, _, _ in pairs], [groups[s][a] for s, a, _ in pairs],
                    [groups[s][b] for s, _, b in pairs], rubrics=rubrics, cache=open_cache(settings, judge),
                    progress=progress)
    rng = random.Random(seed)
    judged = {}
    for (s, a, b), p, vs in zip(pairs, j.p_a, j.votes, strict=True):
        by_rubric: dict[str, list[float]] = {}
        for v in vs:
            by_rubric.setdefault(v["annotator"].rsplit("/", 1)[0], []).append(v["p_a"])
        judged[s, a, b] = (p, [sum(x) / len(x) for x in by_rubric.values()])

    def record(s, a, b):
        p, per_rubric = judged[s, a, b]
        if rng.random() < 0.5:  # random presentation order
            a, b, p, per_rubric = b, a, 1.0 - p, [1.0 - x for x in per_rubric]
        votes = ["a" if x > 0.5 else "b" if x < 0.5 else "tie" for x in per_rubric]
        return {"prompt": prompts[s], "response_a": groups[s][a], "response_b": groups[s][b], "votes": votes,
                "p_a": p, "gold_a": golds[s][a], "gold_b": golds[s][b]}

    by_set: dict[int, list[tuple[int, int, int]]] = {}
    for key, (p, _) in judged.items():
        if p is not None:
            by_set.setdefault(key[0], []).append(key)
    ranked = rank_sets(groups, pairs, j.p_a)
    records, every = [], []
    for s, order in enumerate(ranked):
        if order is None:
            continue
        best, worst = groups[s].index(order[0]), groups[s].index(order[-1])
        records.append(record(s, *sorted((best, worst))))
        every += [record(*key) for key in by_set[s]]
    return records, every, sum(r is None for r in ranked)
