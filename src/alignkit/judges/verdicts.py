"""Judging pairs and K-response sets with any judge backend, and the label files that come out.

Every pair is shown to the judge in both orders under every rubric; each (rubric, order) is one annotator's vote,
so the orders' position bias cancels in the mean. A pair's P(a better) is the mean over its answered votes. The
position consistency is the share of (pair, rubric) whose two orders name the same winner. Verdicts are looked up
in, and written to, a `VerdictCache` chunk by chunk, so a run that stops loses at most the chunk in flight."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from alignkit.data.records import Text
from alignkit.errors import AlignkitError


class JudgeServerError(AlignkitError):
    """A judge server cannot be used: unreachable, refusing, failing or too slow after the retries."""


@dataclass(frozen=True)
class Verdict:
    p: float | None  # P(the response shown first is better); None: the judge gave no answer
    mass: float | None = None  # the probability the judge put on the two answer letters, when known
    why: str | None = None  # for a non-answer: what the judge said instead


class Judge(Protocol):
    id: str  # what identifies the judge in the cache (a local model and its files, or a server's model name)
    chunk: int  # presentations judged at once, and between cache writes

    def judge(self, texts: list[str]) -> list[Verdict]: ...


@dataclass
class Judgments:
    p_a: list[float | None]  # per pair: P(a better), the mean over its answered votes; None when none answered
    votes: list[list[dict]]  # per pair: {"annotator", "choice": a | b | tie, "p_a"} per answered vote
    counts: Counter = field(default_factory=Counter)  # presentations, judged now, from cache, non-answers (by why)
    consistency: float | None = None  # share of (pair, rubric) whose two orders agree on the winner
    answer_mass: float | None = None  # mean probability on the answer letters, when the judge reports it

    def summary(self) -> str:
        c = self.counts
        parts = [f"{c['presentations']} judgments ({c['cached']} from the cache)"]
        if self.consistency is not None:
            parts.append(f"position consistency {self.consistency:.3f}")
        if self.answer_mass is not None:
            parts.append(f"answer-letter mass {self.answer_mass:.3f}")
        skipped = sum(v for k, v in c.items() if k.startswith("non-answer"))
        if skipped:
            whys = ", ".join(f"{k.removeprefix('non-answer: ')} {v}" for k, v in c.items() if k.startswith("non-answer"))
            parts.append(f"{skipped} non-answers skipped ({whys})")
        if c["pairs_without_verdict"]:
            parts.append(f"{c['pairs_without_verdict']} pairs without any verdict left out")
        return "; ".join(parts)


def _choice(p: float) -> str:
    return "a" if p > 0.5 else "b" if p < 0.5 else "tie"


def judge_pairs(judge: Judge, prompts: list[Text], a: list[str], b: list[str], *, rubrics: list, cache,
                chunk: int = 32, progress: bool = True, label: str = "judge") -> Judgments:
    """Judge every pair (prompts[i], a[i], b[i]) in both orders under every rubric (`rubrics.Rubric`), through
    `cache` (`cache.VerdictCache`). `label` names the judge in the votes' `annotator` field."""
    from tqdm.auto import tqdm

    from alignkit.judges.cache import verdict_key

    shows = []  # (pair, rubric, order, key)
    for i, (prompt, x, y) in enumerate(zip(prompts, a, b, strict=True)):
        for r, rubric in enumerate(rubrics):
            for order, (first, second) in (("ab", (x, y)), ("ba", (y, x))):
                shows.append((i, r, order, verdict_key(judge.id, rubric.text, prompt, first, second)))
    todo = {}
    for i, r, order, key in shows:
        if cache.get(key) is None and key not in todo:
            x, y = (a[i], b[i]) if order == "ab" else (b[i], a[i])
            todo[key] = rubrics[r].fill(prompts[i], x, y)
    counts = Counter(presentations=len(shows), cached=len(shows) - len(todo))
    keys = list(todo)
    chunk = getattr(judge, "chunk", chunk)
    with tqdm(total=len(keys), unit="judgment", desc="judging", disable=not progress or not keys) as bar:
        for s in range(0, len(keys), chunk):
            part = keys[s : s + chunk]
            try:
                verdicts = judge.judge([todo[k] for k in part])
            except JudgeServerError as e:
                kept = f"; the {len(cache.entries)} verdicts so far are kept in {cache.path}, and a rerun resumes " \
                       "from them" if cache.path else ""
                raise JudgeServerError(f"{e}{kept}") from e
            cache.put([{"key": k, "p": v.p, "mass": v.mass, "why": v.why} for k, v in zip(part, verdicts, strict=True)])
            bar.update(len(part))
    counts["judged"] = len(keys)

    votes: list[list[dict]] = [[] for _ in prompts]
    by_order: dict[tuple[int, int], dict[str, float]] = {}
    masses = []
    for i, r, order, key in shows:
        v = cache.get(key)
        if v.get("mass") is not None:
            masses.append(v["mass"])
        if v.get("p") is None:
            counts[f"non-answer: {(v.get('why') or 'no answer').split(':')[0]}"] += 1
            continue
        p_a = v["p"] if order == "ab" else 1.0 - v["p"]
        by_order.setdefault((i, r), {})[order] = p_a
        votes[i].append({"annotator": f"{label}/{rubrics[r].name}/{order}", "choice": _choice(p_a), "p_a": p_a})
    p_a = [sum(v["p_a"] for v in vs) / len(vs) if vs else None for vs in votes]
    counts["pairs_without_verdict"] = sum(p is None for p in p_a)
    both = [o for o in by_order.values() if len(o) == 2]
    consistency = sum(_choice(o["ab"]) == _choice(o["ba"]) for o in both) / len(both) if both else None
    return Judgments(p_a, votes, counts, consistency, sum(masses) / len(masses) if masses else None)


def set_pairs(response_sets: list[list[str]]) -> list[tuple[int, int, int]]:
    """(set, i, j) for every two distinct non-empty responses i < j of each set."""
    out = []
    for s, responses in enumerate(response_sets):
        keep = [i for i, r in enumerate(responses) if r.strip() and r not in responses[:i]]
        out += [(s, i, j) for x, i in enumerate(keep) for j in keep[x + 1:]]
    return out


def rank_sets(response_sets: list[list[str]], pairs: list[tuple[int, int, int]],
              p_a: list[float | None]) -> list[list[str] | None]:
    """Each set's responses best first by their summed probability of winning their pairs (ties: earlier
    first); a set with no judged pair gives None. Responses of no judged pair (empty or repeated) are left out."""
    wins: list[dict[int, float]] = [{} for _ in response_sets]
    for (s, i, j), p in zip(pairs, p_a, strict=True):
        if p is None:
            continue
        wins[s][i] = wins[s].get(i, 0.0) + p
        wins[s][j] = wins[s].get(j, 0.0) + 1.0 - p
    return [[response_sets[s][i] for i in sorted(w, key=lambda i: (-w[i], i))] if w else None
            for s, w in enumerate(wins)]


def label_files(prompts: list[Text], a: list[str], b: list[str], j: Judgments,
                rankings: list[tuple[Text, list[str]]] | None = None) -> dict[str, list[dict]]:
    """The files the labeling app exports, from a judge: votes.jsonl (one vote per rubric and order),
    soft_pairs.jsonl (label = the judge's probability of the side it prefers), pairs.jsonl (that side as
    `chosen`; exact ties left out) and, for K-response sets, rankings.jsonl. Pairs without a verdict go
    nowhere (counted in `j.counts`)."""
    out: dict[str, list[dict]] = {"votes.jsonl": [], "soft_pairs.jsonl": [], "pairs.jsonl": []}
    for prompt, x, y, p, vs in zip(prompts, a, b, j.p_a, j.votes, strict=True):
        if p is None:
            continue
        out["votes.jsonl"].append({"prompt": prompt, "response_a": x, "response_b": y, "votes": vs})
        chosen, rejected, label = (x, y, p) if p >= 0.5 else (y, x, 1.0 - p)
        record = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        out["soft_pairs.jsonl"].append({**record, "label": label, "n_votes": len(vs)})
        if p != 0.5:
            out["pairs.jsonl"].append({**record, "n_votes": len(vs)})
    if rankings is not None:
        out["rankings.jsonl"] = [{"prompt": p, "responses": r} for p, r in rankings if r and len(r) >= 2]
    return out


def agreement(p_chosen: list[float | None], labels: list[float], *, clear: float = 0.75, seed: int = 0) -> dict:
    """How a judge's P(chosen better) agrees with reference labels (P(chosen preferred) in [0.5, 1], 1 when hard):
    accuracy (the judge prefers `chosen`; an exact 0.5 counts half), accuracy on pairs whose label is at least
    `clear`, and the Pearson correlation of the judge's probability with the label, each pair oriented at random
    (seeded) so that the correlation measures agreement in direction and strength, not the labels' range."""
    rows = [(p, lab) for p, lab in zip(p_chosen, labels, strict=True) if p is not None]

    def acc(rs):
        return sum(1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for p, _ in rs) / len(rs) if rs else None

    rng = random.Random(seed)
    xs, ys = [], []
    for p, lab in rows:
        flip = rng.random() < 0.5
        xs.append(1.0 - p if flip else p)
        ys.append(1.0 - lab if flip else lab)
    clear_rows = [(p, lab) for p, lab in rows if lab >= clear]
    return {"pairs": len(rows), "accuracy": acc(rows), "clear_pairs": len(clear_rows),
            "accuracy_clear": acc(clear_rows), "correlation": _pearson(xs, ys)}


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else None
