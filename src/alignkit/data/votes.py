"""Several annotators' votes on one pair of responses, turned into labels; and how well annotators agree.

A "votes" record (see `formats.load_pairs(format="votes")`)::

    {"prompt": ..., "response_a": ..., "response_b": ..., "votes": ["a", "b", "tie", ...]}

where each vote is "a", "b" or "tie", or an object {"annotator": "...", "choice": "a" | "b" | "tie"}.

Labels (docs/algorithms.md, "Labels from several annotators"). With n usable votes of which w prefer a:

- soft label p(a ≻ b) = w / n, or with additive smoothing α: (w + α) / (n + 2α);
- tie votes: `tie_policy="half"` counts a tie as half a vote for each side (it stays in n);
  `tie_policy="ignore"` drops tie votes, so they change neither w nor n;
- hard label = the majority: the pair is oriented so that `chosen` is the side with p >= 0.5, and its
  `label` is the (possibly smoothed) vote share of that side, in [0.5, 1]. Training with hard labels uses
  the orientation and ignores `label`.
- an exact tie (p == 0.5) is kept with label 0.5 and response a as `chosen`; the loader counts it in
  `counts["vote_ties"]`. A soft-label loss (cDPO, GDPO) then learns nothing from it, which is right; a
  hard-label loss (plain DPO) sees what amounts to a coin flip, so filter on `label > 0.5` for those.
- a pair with no usable votes (every vote a tie under "ignore") gives no pair at all.

Agreement. For item i with n_i >= 2 votes, n_ij of them in category j (a, b, tie), the share of agreeing
annotator pairs is P_i = Σ_j n_ij (n_ij − 1) / (n_i (n_i − 1)). Mean pairwise agreement P̄ is the mean of P_i
over items. Fleiss' kappa compares it with the agreement expected by chance, P_e = Σ_j p_j², where p_j is
category j's share of all votes: κ = (P̄ − P_e) / (1 − P_e).

Fleiss (1971) assumes every item has the same number of raters. We allow a different n_i per item by
averaging the per-item P_i as above and pooling all votes for p_j; with a constant n this is exactly Fleiss'
kappa. Items with fewer than 2 votes have no pair of annotators and are left out of both numbers. κ is NaN
when all votes fall in one category (P_e = 1: chance agreement is already perfect).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from alignkit.data.records import PreferencePair, Text, Where
from alignkit.errors import ConfigError

CHOICES = ("a", "b", "tie")
TIE_POLICIES = ("half", "ignore")


def normalize_votes(votes: Any) -> list[str]:
    """Votes as a list of "a" / "b" / "tie" (lower case), from strings or {"annotator", "choice"} objects.

    Raises ValueError naming the first bad vote (1-based)."""
    if not isinstance(votes, list | tuple):
        raise ValueError(f"expected a list of votes, got {type(votes).__name__}")
    out = []
    for i, vote in enumerate(votes, 1):
        choice = vote.get("choice") if isinstance(vote, dict) else vote
        if not (isinstance(choice, str) and choice.strip().lower() in CHOICES):
            raise ValueError(
                f"vote {i} is {vote!r}; expected 'a', 'b' or 'tie' (or an object with a 'choice')"
            )
        out.append(choice.strip().lower())
    return out


def check_vote_options(tie_policy: str, smoothing: float) -> None:
    """Raise ConfigError (a ValueError) for an unknown tie policy or a smoothing that is not a finite α >= 0."""
    if tie_policy not in TIE_POLICIES:
        raise ConfigError(f"tie_policy must be one of {', '.join(TIE_POLICIES)}, got {tie_policy!r}")
    if (
        isinstance(smoothing, bool)
        or not isinstance(smoothing, int | float)
        or not (math.isfinite(smoothing) and smoothing >= 0)
    ):
        raise ConfigError(f"smoothing must be a finite number >= 0, got {smoothing!r}")


def aggregate_votes(
    votes: Sequence[Any], *, tie_policy: str = "half", smoothing: float = 0.0
) -> tuple[float | None, int]:
    """Return `(p, n)`: p = P(response a preferred) from the votes, n = number of votes used.

    p = (w + smoothing) / (n + 2 * smoothing), w = votes for a (+ 0.5 per tie under tie_policy="half").
    Under tie_policy="ignore" tie votes are not counted in n. p is None when n == 0."""
    check_vote_options(tie_policy, smoothing)
    a, b, tie = vote_counts(votes)
    if tie_policy == "half":
        w, n = a + 0.5 * tie, a + b + tie
    else:
        w, n = float(a), a + b
    if n == 0:
        return None, 0
    return (w + smoothing) / (n + 2 * smoothing), n


def vote_counts(votes: Sequence[Any]) -> tuple[int, int, int]:
    """Numbers of votes for (a, b, tie)."""
    votes = normalize_votes(votes)
    return votes.count("a"), votes.count("b"), votes.count("tie")


def pair_from_votes(
    prompt: Text,
    response_a: Text,
    response_b: Text,
    votes: Sequence[Any],
    *,
    tie_policy: str = "half",
    smoothing: float = 0.0,
    where: Where | None = None,
) -> PreferencePair | None:
    """The preference pair the votes imply: majority side as `chosen`, its vote share as `label`.

    Returns None when no vote is usable. `meta` records the format, the number of votes used (`n_votes`),
    p(a ≻ b) before orienting (`p_a`) and which response became `chosen` (`chosen_is`: "a" or "b")."""
    p, n = aggregate_votes(votes, tie_policy=tie_policy, smoothing=smoothing)
    if p is None:
        return None
    meta = {"format": "votes", "n_votes": n, "p_a": p}
    if p >= 0.5:
        return PreferencePair(prompt, response_a, response_b, p, where=where, meta={**meta, "chosen_is": "a"})
    return PreferencePair(
        prompt, response_b, response_a, 1.0 - p, where=where, meta={**meta, "chosen_is": "b"}
    )


def _per_item_agreement(table: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[float]]:
    """Validate a count table; return the rows with >= 2 ratings and their agreeing-pair shares P_i."""
    rows = [list(row) for row in table]
    if not rows:
        raise ValueError("the table has no rows")
    width = len(rows[0])
    for i, row in enumerate(rows, 1):
        if len(row) != width:
            raise ValueError(f"row {i} has {len(row)} categories, row 1 has {width}")
        if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in row):
            raise ValueError(f"row {i} must hold counts (integers >= 0), got {row}")
    used = [row for row in rows if sum(row) >= 2]
    shares = [sum(x * (x - 1) for x in row) / (sum(row) * (sum(row) - 1)) for row in used]
    return used, shares


def fleiss_kappa(table: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa for a table with one row per item and one column per category, each entry the number
    of raters who put that item in that category. Rows may have different totals (see the module docstring
    for the generalisation); rows with fewer than 2 ratings are ignored. NaN when undefined."""
    used, shares = _per_item_agreement(table)
    if not used:
        return math.nan
    p_bar = sum(shares) / len(shares)
    total = sum(sum(row) for row in used)
    p_e = sum((sum(column) / total) ** 2 for column in zip(*used, strict=True))
    if p_e >= 1.0:
        return math.nan
    return (p_bar - p_e) / (1.0 - p_e)


def agreement_report(records: Iterable[Any]) -> dict[str, float]:
    """Annotator agreement over items, each a list of votes or a record dict with a "votes" list.

    Returns {"items": items with >= 2 votes, "votes": all votes, "pairwise_agreement": mean share of
    agreeing annotator pairs per item, "fleiss_kappa": kappa over the categories (a, b, tie)}; the last two
    are NaN when no item has 2 votes."""
    table = [list(vote_counts(r["votes"] if isinstance(r, dict) else r)) for r in records]
    if not table:
        return {"items": 0, "votes": 0, "pairwise_agreement": math.nan, "fleiss_kappa": math.nan}
    used, shares = _per_item_agreement(table)
    return {
        "items": len(used),
        "votes": sum(sum(row) for row in table),
        "pairwise_agreement": sum(shares) / len(shares) if shares else math.nan,
        "fleiss_kappa": fleiss_kappa(table),
    }
