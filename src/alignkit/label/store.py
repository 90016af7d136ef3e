"""What the labeling app and the `alignkit label` commands do to the database (tables in `db.py`).

Assignment. An annotator asking for work first gets back their own open task, if any (a reload shows the
same task, in the same order, with the same nonce). Otherwise they get the item with the fewest annotators
so far among those they have never been given, that still has fewer than its R (`replicas`): items fill
breadth first, so the votes spread evenly and every item reaches R before any item gets more. An item's
count is its votes plus its open assignments younger than `timeout_s`; an older open assignment no longer
holds a place (the annotator went away), and if its item has filled up meanwhile it expires. The chosen
item's row is locked (PostgreSQL: SELECT ... FOR UPDATE; SQLite: every transaction is BEGIN IMMEDIATE) and
its count checked again before the assignment is written, so concurrent requests never give an item more
than R annotators. A skipped item is never offered to that annotator again and frees its place.

Votes. A vote is accepted only from the annotator the task was given to (the nonce in the form is looked up;
who submits is decided by the token, never by the form), is translated from screen positions to the
canonical order with the order stored at assignment time, and is committed before the reply. The vote's
UNIQUE idempotency key (the nonce) makes a repeated submission store nothing and report "duplicate".
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from alignkit.data.votes import agreement_report, pair_from_votes
from alignkit.errors import AlignkitError
from alignkit.label.db import annotators, assignments, items, now, votes
from alignkit.label.importer import NewItem

DEFAULT_TIMEOUT_S = 3600
MAX_REASON_CHARS = 2000
CONFIDENCE = {1: "unsure", 2: "fairly sure", 3: "sure"}
THUMBS = ("good", "bad")  # the choices on a thumbs item (one response)
_shuffle = random.SystemRandom().shuffle


class Refused(Exception):
    """A request the app turns down, with the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Task:
    nonce: str
    item_id: int
    kind: str
    prompt: Any
    shown: list  # the responses in screen order
    shown_order: list[int]  # canonical index at each screen position


def _check_nonce(nonce: str) -> None:
    """Nonces are URL-safe base64 (secrets.token_urlsafe); anything else names no task."""
    if not (0 < len(nonce) <= 64 and nonce.replace("-", "").replace("_", "").isalnum() and nonce.isascii()):
        raise Refused(404, "no such task")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)  # SQLite gives back naive datetimes (stored as UTC)


# ----------------------------------------------------------------------------------------------------------
# Items and annotators (the CLI)


def add_items(engine: Engine, new: list[NewItem], replicas: int) -> dict[str, int]:
    """Store `new` items, each to be labelled by `replicas` distinct annotators. An item already in the
    database (same kind, prompt and responses) is not added again; returns counts of added and duplicates."""
    if replicas < 1:
        raise AlignkitError(f"--per-item must be at least 1, got {replicas}")
    added = duplicates = 0
    with engine.begin() as conn:
        seen = set(conn.execute(select(items.c.content_hash)).scalars())
        rows = []
        for it in new:
            content = json.dumps([it.kind, it.prompt, it.responses], ensure_ascii=False)
            digest = hashlib.sha256(content.encode()).hexdigest()
            if digest in seen:
                duplicates += 1
                continue
            seen.add(digest)
            rows.append({"kind": it.kind, "prompt": json.dumps(it.prompt, ensure_ascii=False),
                         "responses": json.dumps(it.responses, ensure_ascii=False),
                         "gold": None if it.gold is None else json.dumps(it.gold), "replicas": replicas,
                         "source": it.source, "content_hash": digest, "created_at": now()})
        if rows:
            conn.execute(insert(items), rows)
            added = len(rows)
    return {"added": added, "duplicates": duplicates}


def invite(engine: Engine, name: str, *, admin: bool = False, new_token: bool = False) -> str:
    """Create annotator `name` (or, with `new_token`, replace an existing one's token) and return the
    personal token. Only its hash is stored, so this is the one time it can be shown."""
    name = name.strip()
    if not name or len(name) > 200 or not name.isprintable():
        raise AlignkitError("an annotator name must be 1 to 200 printable characters")
    token = secrets.token_urlsafe(32)
    with engine.begin() as conn:
        existing = conn.execute(select(annotators.c.id).where(annotators.c.name == name)).scalar()
        if existing is not None and not new_token:
            raise AlignkitError(f"annotator '{name}' exists already (--new-token replaces their token)")
        if existing is None and new_token:
            raise AlignkitError(f"no annotator named '{name}' to give a new token to")
        if existing is None:
            conn.execute(insert(annotators).values(name=name, token_hash=hash_token(token), is_admin=admin,
                                                   created_at=now()))
        else:
            conn.execute(update(annotators).where(annotators.c.id == existing)
                         .values(token_hash=hash_token(token), is_admin=admin))
    return token


def annotator_by_token(engine: Engine, token: str | None):
    """The annotator row (id, name, is_admin) whose token this is, or None."""
    if not token or len(token) > 200:
        return None
    with engine.connect() as conn:
        return conn.execute(select(annotators.c.id, annotators.c.name, annotators.c.is_admin)
                            .where(annotators.c.token_hash == hash_token(token))).first()


# ----------------------------------------------------------------------------------------------------------
# Assignment, votes, skips (the app)


def _holds_place(cutoff: datetime):
    """An assignment that counts towards its item's R: answered, or open and younger than the timeout."""
    return or_(assignments.c.status == "done",
               and_(assignments.c.status == "open", assignments.c.created_at >= cutoff))


def _taken(conn, item_id: int, cutoff: datetime) -> int:
    return conn.execute(select(func.count()).select_from(assignments)
                        .where(assignments.c.item_id == item_id, _holds_place(cutoff))).scalar_one()


def _available(annotator_id: int, cutoff: datetime):
    """Items this annotator was never given that still have a free place, fewest annotators first."""
    taken = (select(assignments.c.item_id, func.count().label("n")).where(_holds_place(cutoff))
             .group_by(assignments.c.item_id).subquery())
    mine = select(assignments.c.item_id).where(assignments.c.annotator_id == annotator_id)
    n = func.coalesce(taken.c.n, 0)
    return (select(items.c.id, items.c.replicas, items.c.responses).outerjoin(taken, taken.c.item_id == items.c.id)
            .where(items.c.id.not_in(mine), n < items.c.replicas).order_by(n, items.c.id))


def _task(row) -> Task:
    responses, order = json.loads(row.responses), json.loads(row.shown_order)
    return Task(row.nonce, row.item_id, row.kind, json.loads(row.prompt), [responses[i] for i in order], order)


def _open_task_query(annotator_id: int):
    return (select(assignments.c.id, assignments.c.nonce, assignments.c.item_id, assignments.c.shown_order,
                   assignments.c.created_at, items.c.kind, items.c.prompt, items.c.responses, items.c.replicas)
            .join(items, items.c.id == assignments.c.item_id)
            .where(assignments.c.annotator_id == annotator_id, assignments.c.status == "open")
            .order_by(assignments.c.id))


def next_task(engine: Engine, annotator_id: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> Task | None:
    """This annotator's open task, or a new one (see the module docstring); None when nothing is left."""
    for _ in range(50):  # a retry only follows a lost race for the same item
        try:
            with engine.begin() as conn:
                cutoff = now() - timedelta(seconds=timeout_s)
                for row in conn.execute(_open_task_query(annotator_id)).all():
                    if _utc(row.created_at) >= cutoff or _taken(conn, row.item_id, cutoff) < row.replicas:
                        return _task(row)
                    conn.execute(update(assignments).where(assignments.c.id == row.id).values(status="expired"))
                pick = conn.execute(_available(annotator_id, cutoff).limit(1)).first()
                if pick is None:
                    return None
                conn.execute(select(items.c.id).where(items.c.id == pick.id).with_for_update())
                if _taken(conn, pick.id, cutoff) >= pick.replicas:
                    continue  # filled by a concurrent request between the pick and the lock
                order = list(range(len(json.loads(pick.responses))))
                _shuffle(order)
                nonce = secrets.token_urlsafe(24)
                conn.execute(insert(assignments).values(item_id=pick.id, annotator_id=annotator_id, nonce=nonce,
                                                        shown_order=json.dumps(order), status="open", created_at=now()))
                return _task(conn.execute(_open_task_query(annotator_id).where(assignments.c.nonce == nonce)).one())
        except (IntegrityError, OperationalError) as e:  # the same annotator in two tabs; a deadlock victim
            if isinstance(e, OperationalError) and "deadlock" not in str(e).lower():
                raise
    raise Refused(503, "the server is too busy to hand out a task; try again")


def _canonical(kind: str, order: list[int], answer: str) -> str:
    """The answer given on screen (pair: "left" / "right" / "tie"; ranking: screen positions best first,
    comma-separated; thumbs: "good" / "bad") in the canonical orientation: "a" / "b" / "tie", a JSON list of
    canonical indices, or "good" / "bad"."""
    if kind == "thumbs":
        if answer not in THUMBS:
            raise Refused(400, "choice must be good or bad")
        return answer
    if kind == "pair":
        if answer == "tie":
            return "tie"
        if answer not in ("left", "right"):
            raise Refused(400, "choice must be left, right or tie")
        return "ab"[order[0 if answer == "left" else 1]]
    try:
        positions = [int(p) for p in answer.split(",")]
    except ValueError:
        positions = []
    if sorted(positions) != list(range(len(order))):
        raise Refused(400, f"a ranking must list each of the {len(order)} responses once")
    return json.dumps([order[p] for p in positions])


def submit_vote(engine: Engine, annotator_id: int, nonce: str, answer: str, *, confidence: int | None = None,
                reason: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """Store one vote and return "stored", or "duplicate" when this task's vote is stored already.

    Raises Refused for a task that is unknown, someone else's, skipped or expired, or a malformed answer."""
    if confidence is not None and confidence not in CONFIDENCE:
        raise Refused(400, "confidence must be 1, 2 or 3")
    _check_nonce(nonce)
    reason = (reason or "").strip() or None
    if reason is not None and len(reason) > MAX_REASON_CHARS:
        raise Refused(400, f"the reason is longer than {MAX_REASON_CHARS} characters")
    if reason is not None and "\x00" in reason:
        raise Refused(400, "the reason contains a NUL character")
    expired = False
    try:
        with engine.begin() as conn:
            a = _own_task(conn, select(assignments, items.c.kind, items.c.replicas)
                          .join(items, items.c.id == assignments.c.item_id).where(assignments.c.nonce == nonce),
                          annotator_id, "done")
            if a is None:
                return "duplicate"
            choice = _canonical(a.kind, json.loads(a.shown_order), answer)
            cutoff = now() - timedelta(seconds=timeout_s)
            if _utc(a.created_at) < cutoff:
                conn.execute(select(items.c.id).where(items.c.id == a.item_id).with_for_update())
                expired = _taken(conn, a.item_id, cutoff) >= a.replicas
            if expired:
                conn.execute(update(assignments).where(assignments.c.id == a.id).values(status="expired"))
            else:
                conn.execute(insert(votes).values(
                    assignment_id=a.id, idempotency_key=nonce, item_id=a.item_id, annotator_id=annotator_id,
                    shown_order=a.shown_order, choice=choice, confidence=confidence, reason=reason, created_at=now()))
                conn.execute(update(assignments).where(assignments.c.id == a.id).values(status="done"))
    except IntegrityError:  # the same form sent twice at once: the other request stored the vote
        with engine.connect() as conn:
            if conn.execute(select(votes.c.id).where(votes.c.idempotency_key == nonce)).first() is None:
                raise
        return "duplicate"
    if expired:
        raise Refused(409, "this task waited too long and was given to someone else; here is a new one")
    return "stored"


def _own_task(conn, query, annotator_id: int, repeat_status: str):
    """The open task `query` finds, when it belongs to `annotator_id`; None when it is already in
    `repeat_status` (the same request sent again); Refused otherwise."""
    a = conn.execute(query).first()
    if a is None:
        raise Refused(404, "no such task")
    if a.annotator_id != annotator_id:
        raise Refused(403, "this task was given to another annotator")
    if a.status == repeat_status:
        return None
    if a.status != "open":
        raise Refused(409, f"this task is {a.status}")
    return a


def skip_task(engine: Engine, annotator_id: int, nonce: str) -> str:
    """Mark the task skipped ("skipped", or "duplicate" when it was already); the item goes to someone else."""
    _check_nonce(nonce)
    with engine.begin() as conn:
        a = _own_task(conn, select(assignments).where(assignments.c.nonce == nonce), annotator_id, "skipped")
        if a is None:
            return "duplicate"
        conn.execute(update(assignments).where(assignments.c.id == a.id).values(status="skipped"))
    return "skipped"


def progress(engine: Engine, annotator_id: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, int]:
    """This annotator's answered and skipped counts and how many more items they could be given now."""
    cutoff = now() - timedelta(seconds=timeout_s)
    with engine.connect() as conn:
        counts = dict(conn.execute(select(assignments.c.status, func.count())
                                   .where(assignments.c.annotator_id == annotator_id)
                                   .group_by(assignments.c.status)).all())
        left = conn.execute(select(func.count()).select_from(_available(annotator_id, cutoff).subquery())).scalar_one()
    return {"done": counts.get("done", 0), "skipped": counts.get("skipped", 0), "left": left + counts.get("open", 0)}


# ----------------------------------------------------------------------------------------------------------
# Status and export (the CLI and the admin page)


def _load_all(conn):
    """All items (by id) and all votes, oldest first."""
    all_items = {r.id: r for r in conn.execute(select(items).order_by(items.c.id))}
    all_votes = conn.execute(select(votes, annotators.c.name).join(annotators, annotators.c.id == votes.c.annotator_id)
                             .order_by(votes.c.id)).all()
    return all_items, all_votes


def gold_score(kind: str, gold: Any, choice: Any) -> float:
    """1/0 for a pair or a thumbs item (the known answer or not); for a ranking, the share of its pairs of
    responses put in the known order."""
    if kind != "ranking":
        return float(choice == gold)
    position = {c: i for i, c in enumerate(choice)}
    pairs = [(gold[i], gold[j]) for i in range(len(gold)) for j in range(i + 1, len(gold))]
    return sum(position[x] < position[y] for x, y in pairs) / len(pairs)


def status(engine: Engine) -> dict[str, Any]:
    """Progress (items complete, votes, skips), per-annotator counts with gold-item accuracy, and agreement
    between annotators on pair items (mean pairwise agreement, Fleiss' kappa over a / b / tie) and on thumbs
    items (the same over good / bad)."""
    with engine.connect() as conn:
        all_items, all_votes = _load_all(conn)
        people = conn.execute(select(annotators).order_by(annotators.c.id)).all()
        states = conn.execute(select(assignments.c.annotator_id, assignments.c.status, func.count())
                              .group_by(assignments.c.annotator_id, assignments.c.status)).all()
    per_item: dict[int, list] = {}
    for v in all_votes:
        per_item.setdefault(v.item_id, []).append(v)
    per_person = {p.id: {"name": p.name, "admin": bool(p.is_admin), "votes": 0, "skipped": 0, "open": 0,
                         "gold_votes": 0, "gold_score": None} for p in people}
    for annotator_id, state, n in states:
        if state in ("skipped", "open"):
            per_person[annotator_id][state] = n
    gold_sums: dict[int, float] = {}
    for v in all_votes:
        person, item = per_person[v.annotator_id], all_items[v.item_id]
        person["votes"] += 1
        if item.gold is not None:
            choice = json.loads(v.choice) if item.kind == "ranking" else v.choice
            person["gold_votes"] += 1
            gold_sums[v.annotator_id] = gold_sums.get(v.annotator_id, 0.0) + gold_score(item.kind, json.loads(item.gold), choice)
    for annotator_id, total in gold_sums.items():
        per_person[annotator_id]["gold_score"] = total / per_person[annotator_id]["gold_votes"]
    pair_votes = [[v.choice for v in vs] for i, vs in per_item.items() if all_items[i].kind == "pair"]
    # thumbs votes as two categories of the same table: good as "a", bad as "b" (the tie column stays empty)
    thumbs_votes = [["a" if v.choice == "good" else "b" for v in vs] for i, vs in per_item.items()
                    if all_items[i].kind == "thumbs"]
    return {
        "items": len(all_items),
        "pair_items": sum(it.kind == "pair" for it in all_items.values()),
        "ranking_items": sum(it.kind == "ranking" for it in all_items.values()),
        "thumbs_items": sum(it.kind == "thumbs" for it in all_items.values()),
        "gold_items": sum(it.gold is not None for it in all_items.values()),
        "complete_items": sum(len(per_item.get(i, [])) >= it.replicas for i, it in all_items.items()),
        "items_without_votes": sum(i not in per_item for i in all_items),
        "votes": len(all_votes),
        "skips": sum(p["skipped"] for p in per_person.values()),
        "open_tasks": sum(p["open"] for p in per_person.values()),
        "annotators": list(per_person.values()),
        "agreement": _agreement(pair_votes),
        "thumbs_agreement": _agreement(thumbs_votes),
    }


def _agreement(vote_lists: list[list[str]]) -> dict[str, Any]:
    """agreement_report, with None for its NaNs (JSON has no NaN)."""
    report = agreement_report(vote_lists)
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.items()}


EXPORT_FILES = ("pairs.jsonl", "soft_pairs.jsonl", "rankings.jsonl", "votes.jsonl", "ranking_votes.jsonl",
                "kto.jsonl", "thumbs_votes.jsonl")
THUMBS_FILES = ("kto.jsonl", "thumbs_votes.jsonl")  # written only when the database holds thumbs items


def _vote_record(v, **extra) -> dict[str, Any]:
    record = {"annotator": v.name, **extra, "shown_order": json.loads(v.shown_order), "confidence": v.confidence,
              "reason": v.reason, "time": _utc(v.created_at).isoformat()}
    return record


def export(engine: Engine, out_dir: str, *, min_votes: int = 1, include_gold: bool = False) -> dict[str, int]:
    """Write the labels to `out_dir` and return what was written and left out (see README, `label export`):

    - votes.jsonl: every pair item with its votes, in the "votes" format (`load_pairs` reads it);
    - ranking_votes.jsonl: every ranking item, `candidates` in canonical order, each vote's `ranking`;
    - soft_pairs.jsonl: pairs with `label` = vote share of `chosen` (ties count half), the majority side as
      `chosen`; a ranking item gives one such pair per two of its responses (share of annotators who put
      one above the other);
    - pairs.jsonl: the same pairs with hard labels (majority side as `chosen`, no `label`); exact ties are
      left out and counted;
    - rankings.jsonl: ranking items ordered by mean position over the annotators (Borda), best first;
    - thumbs_votes.jsonl: every thumbs item, its `completion` and each vote's `choice` ("good" / "bad");
    - kto.jsonl: thumbs items by majority, `label` true when most votes say good (KTO's desirable), with
      `votes_good` / `votes_bad`; exact ties are left out and counted.

    The two thumbs files are written only when the database holds thumbs items, so an export of pairs and
    rankings leaves a kto.jsonl of the folder alone. Gold items go only into the raw vote files unless
    `include_gold`; items with fewer than `min_votes` votes go nowhere but into the raw vote files.
    Returns the number of records of each file written and the counts of what was left out."""
    if min_votes < 1:
        raise AlignkitError(f"--min-votes must be at least 1, got {min_votes}")
    with engine.connect() as conn:
        all_items, all_votes = _load_all(conn)
    per_item: dict[int, list] = {}
    for v in all_votes:
        per_item.setdefault(v.item_id, []).append(v)
    thumbs = any(it.kind == "thumbs" for it in all_items.values())
    out = {name: [] for name in EXPORT_FILES if thumbs or name not in THUMBS_FILES}
    counts = {"items_without_votes": sum(i not in per_item for i in all_items), "below_min_votes": 0,
              "gold_left_out": 0, "hard_ties_left_out": 0, "pairs_from_rankings": 0, "ranking_position_ties": 0,
              "thumbs_ties_left_out": 0}
    for item_id, vs in per_item.items():
        item = all_items[item_id]
        prompt, responses = json.loads(item.prompt), json.loads(item.responses)
        gold = None if item.gold is None else json.loads(item.gold)
        extra = {"item": item_id} if gold is None else {"item": item_id, "gold": gold}
        if item.kind == "pair":
            out["votes.jsonl"].append({"prompt": prompt, "response_a": responses[0], "response_b": responses[1],
                                       "votes": [_vote_record(v, choice=v.choice) for v in vs], **extra})
        elif item.kind == "thumbs":
            out["thumbs_votes.jsonl"].append({"prompt": prompt, "completion": responses[0],
                                              "votes": [_vote_record(v, choice=v.choice) for v in vs], **extra})
        else:
            out["ranking_votes.jsonl"].append({"prompt": prompt, "candidates": responses, "votes": [
                _vote_record(v, ranking=json.loads(v.choice)) for v in vs], **extra})
        if len(vs) < min_votes:
            counts["below_min_votes"] += 1
            continue
        if gold is not None and not include_gold:
            counts["gold_left_out"] += 1
            continue
        if item.kind == "thumbs":
            good = sum(v.choice == "good" for v in vs)
            bad = len(vs) - good
            if good == bad:
                counts["thumbs_ties_left_out"] += 1
            else:
                out["kto.jsonl"].append({"prompt": prompt, "completion": responses[0], "label": good > bad,
                                         "votes_good": good, "votes_bad": bad})
            continue
        if item.kind == "pair":
            comparisons = [(responses[0], responses[1], [v.choice for v in vs])]
        else:
            rankings = [json.loads(v.choice) for v in vs]
            positions = [{c: p for p, c in enumerate(r)} for r in rankings]
            comparisons = [(responses[i], responses[j], ["a" if pos[i] < pos[j] else "b" for pos in positions])
                           for i in range(len(responses)) for j in range(i + 1, len(responses))]
            counts["pairs_from_rankings"] += len(comparisons)
            mean = [sum(pos[c] for pos in positions) / len(positions) for c in range(len(responses))]
            if len(set(mean)) < len(mean):
                counts["ranking_position_ties"] += 1
            best_first = sorted(range(len(responses)), key=lambda c: (mean[c], c))
            out["rankings.jsonl"].append({"prompt": prompt, "responses": [responses[c] for c in best_first],
                                          "n_votes": len(vs)})
        for a, b, choices in comparisons:
            pair = pair_from_votes(prompt, a, b, choices)
            record = {"prompt": prompt, "chosen": pair.chosen, "rejected": pair.rejected}
            out["soft_pairs.jsonl"].append({**record, "label": pair.label, "n_votes": len(choices)})
            if pair.label == 0.5:
                counts["hard_ties_left_out"] += 1
            else:
                out["pairs.jsonl"].append({**record, "n_votes": len(choices)})
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in out.items():
        with open(folder / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        counts[name] = len(rows)
    return counts
