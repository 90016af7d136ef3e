"""The labeling store and the `alignkit label` / `alignkit sample` commands, on SQLite and on PostgreSQL (the
PostgreSQL cases need ALIGNKIT_TEST_PG_URL, which scripts/test.sh sets after starting a throwaway server).
The web app through HTTP and a real browser is in test_label_web.py."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import uuid

import pytest
from sqlalchemy import func, inspect, select, text

from alignkit.cli.main import main
from alignkit.data import load_pairs, load_rankings
from alignkit.errors import AlignkitError
from alignkit.label import store
from alignkit.label.db import assignments, open_db, votes
from alignkit.label.importer import read_items
from conftest import REPO, write_jsonl

PG_URL = os.environ.get("ALIGNKIT_TEST_PG_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty labeling database URL: a SQLite file, or a new database on the test PostgreSQL server."""
    if request.param == "sqlite":
        yield str(tmp_path / "label.db")
        return
    if not PG_URL:
        pytest.skip("ALIGNKIT_TEST_PG_URL is not set (scripts/test.sh starts PostgreSQL on 127.0.0.1 and sets it)")
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    name = f"alignkit_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def engine(db_url):
    e = open_db(db_url, create=True)
    yield e
    e.dispose()


def sets(n: int, k: int = 2, tag: str = "") -> list[dict]:
    return [{"prompt": f"prompt {tag}{i}", "responses": [f"response {j} to {tag}{i}" for j in range(k)]} for i in range(n)]


def add(engine, tmp_path, rows, *, replicas=2, gold=False, name=None):
    path = write_jsonl(tmp_path / (name or f"items-{uuid.uuid4().hex[:6]}.jsonl"), rows)
    new, _ = read_items(path, gold=gold)
    return store.add_items(engine, new, replicas)


def people(engine, n: int, prefix: str = "ann") -> list[int]:
    for i in range(n):
        store.invite(engine, f"{prefix}{i}")
    return _ids(engine, prefix)


def _ids(engine, prefix):
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT id FROM annotators WHERE name LIKE :p ORDER BY id"),
                                 {"p": prefix + "%"}).scalars())


def answer(engine, annotator_id, canonical: str = "a", **kw) -> store.Task | None:
    """Take this annotator's next task and answer it with the given canonical choice (pairs)."""
    task = store.next_task(engine, annotator_id)
    if task is None:
        return None
    screen = "tie" if canonical == "tie" else "left" if "ab"[task.shown_order[0]] == canonical else "right"
    assert store.submit_vote(engine, annotator_id, task.nonce, screen, **kw) == "stored"
    return task


def vote_rows(engine):
    with engine.connect() as conn:
        return conn.execute(select(votes).order_by(votes.c.id)).all()


# ----------------------------------------------------------------------------------------------------------
# import


def test_import_shapes_duplicates_and_gold(engine, tmp_path):
    assert add(engine, tmp_path, sets(2, 2) + sets(1, 4, "r")) == {"added": 3, "duplicates": 0}
    assert add(engine, tmp_path, [{"prompt": "p", "chosen": "good", "rejected": "bad", "label": 0.5},
                                  {"prompt": "q", "chosen": "yes", "rejected": "no"}], gold=True) == {"added": 2, "duplicates": 0}
    assert add(engine, tmp_path, [{"prompt": "u", "response_a": "x", "response_b": "y"}]) == {"added": 1, "duplicates": 0}
    assert add(engine, tmp_path, sets(2, 2)) == {"added": 0, "duplicates": 2}  # importing again adds nothing
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT kind, responses, gold, replicas FROM items ORDER BY id")).all()
    assert [r.kind for r in rows] == ["pair", "pair", "ranking", "pair", "pair", "pair"]
    assert json.loads(rows[2].responses) == [f"response {j} to r0" for j in range(4)]
    assert [None if r.gold is None else json.loads(r.gold) for r in rows] == [None, None, None, "tie", "a", None]
    s = store.status(engine)
    assert (s["items"], s["pair_items"], s["ranking_items"], s["gold_items"]) == (6, 5, 1, 2)


def test_unlabelled_pairs_cannot_be_gold(tmp_path):
    path = write_jsonl(tmp_path / "ab.jsonl", [{"prompt": "u", "response_a": "x", "response_b": "y"}])
    with pytest.raises(AlignkitError, match="gold items need a known answer"):
        read_items(path, gold=True)


@pytest.mark.parametrize("lines, expected", [
    (['{"prompt": "p", "responses": ["a", "b"]}', '{"prompt": "p", "responses": ["a", '],
     r"bad\.jsonl:2: invalid JSON"),
    (['{"prompt": "p", "responses": ["a", "b"]}', '{"prompt": "p", "responses": ["a", ""]}'],
     r"bad\.jsonl:2: field 'responses': response 2: text is empty"),
    (['{"prompt": "p", "responses": ["a", "b"]}', '{"prompt": 7, "responses": ["a", "b"]}'],
     r"bad\.jsonl:2: field 'prompt': expected a string or a list of messages, got int"),
    (['{"prompt": "p", "response_a": "x", "response_b": "y"}', '{"prompt": "p", "response_a": "x"}'],
     r"bad\.jsonl:2: field 'response_b': required field is missing"),
    (['{"prompt": "p", "response_a": "x", "response_b": "y"}', '{"prompt": "p", "response_a": "x", "response_b": "x"}'],
     r"bad\.jsonl:2: field 'response_b': responses 1 and 2 are identical"),
    (['{"prompt": "p", "response_a": "x", "response_b": "y"}', '{"prompt": "p", "response_a": [1], "response_b": "x"}'],
     r"bad\.jsonl:2: field 'response_a': response 1: message 1 must be an object"),
    (['{"text": "p"}'], r"bad\.jsonl: cannot tell the data format from the keys \['text'\]"),
], ids=["broken-json", "empty-response", "prompt-int", "missing-response-b", "identical", "bad-message", "unknown-shape"])
def test_import_bad_records_one_clear_message(lines, expected, tmp_path, capsys):
    import re

    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    code = main(["label", "import", str(bad), "--db", str(tmp_path / "l.db")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and re.search(expected, errors[0]), err


GOOD_SET = '{"prompt": "p", "responses": ["a", "b"]}'
GOOD_ONE = '{"prompt": "p", "completion": "a", "label": true}'


@pytest.mark.parametrize("args, lines, expected", [
    (["--thumbs"], [GOOD_SET, '{"prompt": "p", "responses": ["a", ""]}'],
     r"bad\.jsonl:2: field 'responses': response 2: text is empty$"),
    (["--thumbs"], [GOOD_SET, '{"prompt": "p", "responses": []}'],
     r"bad\.jsonl:2: field 'responses': expected a non-empty list of responses, got an empty list$"),
    ([], [GOOD_ONE, '{"prompt": "p", "completion": ""}'], r"bad\.jsonl:2: field 'completion': text is empty$"),
    ([], [GOOD_ONE, '{"prompt": "p"}'], r"bad\.jsonl:2: field 'completion': required field is missing$"),
    ([], [GOOD_ONE, '{"completion": "a"}'], r"bad\.jsonl:2: field 'prompt': required field is missing$"),
    ([], [GOOD_ONE, '{"prompt": "p", "completion": [{"role": "assistant", "content": "x"}]}'],
     r"bad\.jsonl:2: field 'completion': the prompt is a string, so this must be one too"),
    (["--gold"], [GOOD_ONE, '{"prompt": "p", "completion": "b", "label": 1}'],
     r"bad\.jsonl:2: field 'label': a gold thumbs item needs its known label, true \(good\) or false \(bad\); got 1$"),
    (["--thumbs", "--gold"], [GOOD_SET], r"bad\.jsonl: gold thumbs items need a known label: give prompt/completion/label"),
    (["--thumbs"], ['{"prompt": "p", "chosen": "a", "rejected": "b"}'],
     r"bad\.jsonl: thumbs items are made from prompt/responses or prompt/completion records"),
], ids=["empty-response", "no-responses", "empty-completion", "missing-completion", "missing-prompt",
        "completion-messages", "gold-label-int", "gold-from-responses", "thumbs-from-pairs"])
def test_thumbs_import_bad_records_one_clear_message(args, lines, expected, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    code = main(["label", "import", str(bad), *args, "--db", str(tmp_path / "l.db")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and re.search(expected, errors[0]), err
    assert not (tmp_path / "l.db").exists()


def test_import_skip_invalid_counts(tmp_path, capsys):
    rows = [json.dumps(r) for r in sets(5)]
    rows[1] = '{"prompt": "p", "responses": ["only one"]}'
    rows[3] = "not json"
    (tmp_path / "some.jsonl").write_text("\n".join(rows) + "\n")
    db = str(tmp_path / "l.db")
    assert main(["label", "import", str(tmp_path / "some.jsonl"), "--db", db, "--skip-invalid"]) == 0
    out = capsys.readouterr()
    assert "3 loaded of 5 read; 2 invalid skipped" in out.err and ":2: field 'responses'" in out.err
    assert "3 items (3 pairs, 0 rankings, 0 thumbs): 3 added" in out.out
    engine = open_db(db)
    assert store.status(engine)["items"] == 3
    engine.dispose()


GOOD_PAIR = '{"prompt": "p", "chosen": "a", "rejected": "b"}'


@pytest.mark.parametrize("bad, expected", [
    ('{"prompt": "p", "chosen": "x\\ud800y", "rejected": "b"}',
     r"bad\.jsonl:2: field 'chosen': text holds a lone surrogate \\ud800 at character 2, which is not valid Unicode$"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "label": ' + "1" * 5000 + "}",
     r"bad\.jsonl:2: invalid JSON: a number has more than 4300 digits$"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "rejected": "c"}', r"bad\.jsonl:2: field 'rejected' appears twice$"),
    (None, r"data file '/dev/zero' is not a regular file"),
], ids=["lone-surrogate", "5000-digits", "duplicate-key", "dev-zero"])
def test_import_bad_file_creates_no_database(bad, expected, tmp_path, capsys):
    """Issue 18: every file is read and checked before the database is opened, so a bad one (here after a good
    file) leaves no database behind."""
    import re

    (tmp_path / "good.jsonl").write_text(GOOD_PAIR + "\n")
    path = "/dev/zero"
    if bad is not None:
        path = str(tmp_path / "bad.jsonl")
        (tmp_path / "bad.jsonl").write_text(GOOD_PAIR + "\n" + bad + "\n")
    db = tmp_path / "l.db"
    code = main(["label", "import", str(tmp_path / "good.jsonl"), path, "--db", str(db)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and re.search(expected, errors[0]), err
    assert not db.exists()


@pytest.mark.parametrize("db, expected", [
    ("mysql://u@h/d", "the scheme 'mysql' is not supported"),
    ("postgresql://u@127.0.0.1:1/d", "cannot open the labeling database 'postgresql://u@127.0.0.1:1/d'"),
    ("missing.db", "no labeling database at 'missing.db'"),
    ("postgresql://u:p@h:notaport/d", "bad database URL"),
], ids=["scheme", "unreachable", "missing-file", "malformed"])
def test_bad_database_one_clear_message(db, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["label", "status", "--db", db]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and expected in err, err


def test_schema_is_versioned(db_url):
    engine = open_db(db_url, create=True)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT version FROM schema_version")).scalar_one() == 1
        assert {"items", "assignments", "votes", "annotators", "settings"} <= set(inspect(conn).get_table_names())
        conn.execute(text("UPDATE schema_version SET version = 99"))
    engine.dispose()
    with pytest.raises(AlignkitError, match="schema version 99, newer than this alignkit supports"):
        open_db(db_url)


def test_not_a_labeling_database(tmp_path):
    import sqlite3

    path = tmp_path / "other.db"
    sqlite3.connect(path).execute("CREATE TABLE orders (id INTEGER)").connection.commit()
    with pytest.raises(AlignkitError, match="holds other tables"):
        open_db(str(path), create=True)


# ----------------------------------------------------------------------------------------------------------
# assignment, votes, skips


def test_each_item_gets_r_distinct_annotators_spread_evenly(engine, tmp_path):
    add(engine, tmp_path, sets(4), replicas=2)
    a, b, c = people(engine, 3)
    # breadth first: the 4 items each get one annotator before any gets a second
    assert [answer(engine, who).item_id for who in (a, b, c, a)] == [1, 2, 3, 4]
    with engine.connect() as conn:
        assert dict(conn.execute(select(votes.c.item_id, func.count()).group_by(votes.c.item_id)).all()) == {
            1: 1, 2: 1, 3: 1, 4: 1}
    while any(answer(engine, who) for who in (a, b, c)):
        pass
    rows = vote_rows(engine)
    assert len(rows) == 8  # 4 items x R=2, no more
    for item in range(1, 5):
        who = [r.annotator_id for r in rows if r.item_id == item]
        assert len(who) == 2 and len(set(who)) == 2  # R distinct annotators, never the same person twice
    assert all(store.next_task(engine, x) is None for x in (a, b, c))


def test_skip_frees_the_place_and_is_never_offered_again(engine, tmp_path):
    add(engine, tmp_path, sets(1), replicas=1)
    a, b = people(engine, 2)
    task = store.next_task(engine, a)
    assert store.next_task(engine, b) is None  # the only place is held by a's open task
    assert store.next_task(engine, a).nonce == task.nonce  # a reload shows the same task
    assert store.skip_task(engine, a, task.nonce) == "skipped"
    assert store.skip_task(engine, a, task.nonce) == "duplicate"
    assert store.next_task(engine, a) is None  # a skipped it: never again for a
    assert answer(engine, b).item_id == task.item_id
    with pytest.raises(store.Refused) as e:
        store.submit_vote(engine, a, task.nonce, "left")
    assert e.value.status == 409
    s = store.status(engine)
    assert s["skips"] == 1 and s["complete_items"] == 1 and s["votes"] == 1


def test_concurrent_requests_never_exceed_r(engine, tmp_path):
    add(engine, tmp_path, sets(3), replicas=2)
    ids = people(engine, 12)
    barrier = threading.Barrier(len(ids))
    got, errors = {}, []

    def ask(who):
        barrier.wait()
        try:
            got[who] = store.next_task(engine, who)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=ask, args=(who,)) for who in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    given = [t.item_id for t in got.values() if t is not None]
    assert sorted(given) == [1, 1, 2, 2, 3, 3]  # 3 items x R=2 places, 6 annotators left without a task


def test_votes_are_idempotent_and_only_from_their_annotator(engine, tmp_path):
    add(engine, tmp_path, sets(2), replicas=2)
    a, b = people(engine, 2)
    task = store.next_task(engine, a)
    with pytest.raises(store.Refused) as e:  # b can not answer a's task
        store.submit_vote(engine, b, task.nonce, "left")
    assert e.value.status == 403
    with pytest.raises(store.Refused) as e:
        store.skip_task(engine, b, task.nonce)
    assert e.value.status == 403
    assert vote_rows(engine) == []
    assert store.submit_vote(engine, a, task.nonce, "left") == "stored"
    assert store.submit_vote(engine, a, task.nonce, "right") == "duplicate"  # a retry stores nothing new
    rows = vote_rows(engine)
    assert len(rows) == 1 and rows[0].choice == "ab"[task.shown_order[0]] and rows[0].annotator_id == a
    # the same form sent many times at once: one vote
    task = store.next_task(engine, a)
    barrier = threading.Barrier(8)
    results = []

    def send():
        barrier.wait()
        results.append(store.submit_vote(engine, a, task.nonce, "tie"))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["duplicate"] * 7 + ["stored"]
    assert len(vote_rows(engine)) == 2
    with pytest.raises(store.Refused) as e:
        store.submit_vote(engine, a, "no-such-nonce", "left")
    assert e.value.status == 404


def test_screen_order_is_random_recorded_and_mapped_back(engine, tmp_path):
    add(engine, tmp_path, sets(40), replicas=1)
    (who,) = people(engine, 1)
    orders = []
    while (task := store.next_task(engine, who)) is not None:
        store.submit_vote(engine, who, task.nonce, "left")
        orders.append(task.shown_order)
        assert task.shown == [f"response {i} to {task.item_id - 1}" for i in task.shown_order]
    rows = vote_rows(engine)
    assert len(rows) == 40 and {tuple(o) for o in orders} == {(0, 1), (1, 0)}  # both orders occur
    for row, order in zip(rows, orders, strict=True):
        assert json.loads(row.shown_order) == order and row.choice == "ab"[order[0]]


def test_ranking_answers_and_bad_answers(engine, tmp_path):
    add(engine, tmp_path, sets(1, 4), replicas=1)
    (who,) = people(engine, 1)
    task = store.next_task(engine, who)
    assert task.kind == "ranking" and sorted(task.shown_order) == [0, 1, 2, 3]
    for bad in ("0,1,2", "0,1,2,2", "a,b,c,d", "left", "0,1,2,3,4"):
        with pytest.raises(store.Refused) as e:
            store.submit_vote(engine, who, task.nonce, bad)
        assert e.value.status == 400
    with pytest.raises(store.Refused):
        store.submit_vote(engine, who, task.nonce, "3,2,1,0", confidence=7)
    assert store.submit_vote(engine, who, task.nonce, "3,2,1,0", confidence=3, reason=" fine ") == "stored"
    (row,) = vote_rows(engine)
    assert json.loads(row.choice) == [task.shown_order[p] for p in (3, 2, 1, 0)]
    assert (row.confidence, row.reason) == (3, "fine")


def test_abandoned_task_expires(engine, tmp_path):
    add(engine, tmp_path, sets(1), replicas=1)
    a, b = people(engine, 2)
    old = store.next_task(engine, a, timeout_s=3600)
    assert store.next_task(engine, b, timeout_s=3600) is None
    taken = store.next_task(engine, b, timeout_s=0)  # a's open task no longer holds the place
    assert taken is not None and taken.item_id == old.item_id
    store.submit_vote(engine, b, taken.nonce, "left", timeout_s=0)
    with pytest.raises(store.Refused) as e:  # a comes back after the item was filled
        store.submit_vote(engine, a, old.nonce, "left", timeout_s=0)
    assert e.value.status == 409
    with engine.connect() as conn:
        assert conn.execute(select(assignments.c.status).where(assignments.c.nonce == old.nonce)).scalar() == "expired"
    assert len(vote_rows(engine)) == 1


def test_injection_strings_are_stored_literally(engine, tmp_path):
    evil = "x'); DROP TABLE votes; --"
    add(engine, tmp_path, [{"prompt": evil, "responses": [evil + " a", "\" OR 1=1 --"]}], replicas=1)
    store.invite(engine, evil)
    (who,) = _ids(engine, "x'")
    answer(engine, who, "b", reason=evil)
    store.export(engine, str(tmp_path / "out"))
    record = json.loads((tmp_path / "out" / "votes.jsonl").read_text())
    assert record["prompt"] == evil and record["response_b"] == "\" OR 1=1 --"
    assert record["votes"][0]["annotator"] == evil and record["votes"][0]["reason"] == evil
    assert len(vote_rows(engine)) == 1  # the table is still there


# ----------------------------------------------------------------------------------------------------------
# status and export


def test_status_gold_scores_and_agreement(engine, tmp_path):
    add(engine, tmp_path, sets(2), replicas=3)
    add(engine, tmp_path, [{"prompt": "gold pair", "chosen": "right", "rejected": "wrong"}], replicas=3, gold=True)
    add(engine, tmp_path, [{"prompt": "gold ranking", "responses": ["1st", "2nd", "3rd"]}], replicas=3, gold=True)
    a, b, c = people(engine, 3)
    plan = {a: {1: "a", 2: "a", 3: "a"}, b: {1: "a", 2: "b", 3: "b"}, c: {1: "b", 2: "tie", 3: "a"}}
    for who, answers in plan.items():
        while (task := store.next_task(engine, who)) is not None:
            if task.kind == "ranking":  # a: gold order; b: reversed; c: first two swapped
                canonical = {a: [0, 1, 2], b: [2, 1, 0], c: [1, 0, 2]}[who]
                screen = ",".join(str(task.shown_order.index(x)) for x in canonical)
                store.submit_vote(engine, who, task.nonce, screen)
            else:
                want = answers[task.item_id]
                screen = "tie" if want == "tie" else "left" if "ab"[task.shown_order[0]] == want else "right"
                store.submit_vote(engine, who, task.nonce, screen)
    s = store.status(engine)
    assert s["votes"] == 12 and s["complete_items"] == 4
    by_name = {p["name"]: p for p in s["annotators"]}
    assert by_name["ann0"]["gold_votes"] == 2 and by_name["ann0"]["gold_score"] == 1.0
    assert by_name["ann1"]["gold_score"] == pytest.approx((0 + 0) / 2)  # gold pair wrong, ranking reversed: 0/3
    assert by_name["ann2"]["gold_score"] == pytest.approx((1 + 2 / 3) / 2)
    # agreement over the 3 pair items: (a,a,b), (a,b,tie), (a,b,a) -> P_i = 1/3, 0, 1/3
    assert s["agreement"]["items"] == 3
    assert s["agreement"]["pairwise_agreement"] == pytest.approx((1 / 3 + 0 + 1 / 3) / 3)
    p_a, p_b, p_t = 5 / 9, 3 / 9, 1 / 9
    p_e = p_a**2 + p_b**2 + p_t**2
    assert s["agreement"]["fleiss_kappa"] == pytest.approx((2 / 9 - p_e) / (1 - p_e))


def test_status_command_text_and_json(engine, db_url, tmp_path, capsys):
    add(engine, tmp_path, sets(2), replicas=1)
    (who,) = people(engine, 1)
    answer(engine, who)
    assert main(["label", "status", "--db", db_url, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["votes"] == 1 and s["items"] == 2 and s["annotators"][0]["votes"] == 1
    assert main(["label", "status", "--db", db_url]) == 0
    out = capsys.readouterr().out
    assert "items: 2 (2 pairs, 0 rankings, 0 thumbs, 0 gold); complete: 1" in out and "ann0" in out


def test_export_labels_in_the_trainers_formats(engine, tmp_path):
    add(engine, tmp_path, sets(3), replicas=4)  # pair items 1-3
    add(engine, tmp_path, sets(1, 3, "r"), replicas=4)  # ranking item 4
    add(engine, tmp_path, [{"prompt": "g", "chosen": "c", "rejected": "r"}], replicas=4, gold=True)  # gold item 5
    ids = people(engine, 4)
    plan = {1: ["a", "a", "a", "b"], 2: ["b", "b", "tie", "a"], 3: ["a", "b", "a", "b"]}
    rankings = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [0, 1, 2]]
    for n, who in enumerate(ids):
        while (task := store.next_task(engine, who)) is not None:
            if task.kind == "ranking":
                screen = ",".join(str(task.shown_order.index(x)) for x in rankings[n])
                store.submit_vote(engine, who, task.nonce, screen, confidence=2)
            else:
                want = plan.get(task.item_id, ["a"] * 4)[n]
                screen = "tie" if want == "tie" else "left" if "ab"[task.shown_order[0]] == want else "right"
                store.submit_vote(engine, who, task.nonce, screen)
    out = tmp_path / "out"
    counts = store.export(engine, str(out))
    r = lambda i, tag="": f"response {i} to {tag}"  # noqa: E731
    # soft labels: vote share of the majority side, ties half
    soft, report = load_pairs(str(out / "soft_pairs.jsonl"))
    got = {(p.prompt, p.chosen, p.rejected): p.label for p in soft}
    assert got[("prompt 0", r(0, "0"), r(1, "0"))] == 0.75
    assert got[("prompt 1", r(1, "1"), r(0, "1"))] == pytest.approx(2.5 / 4)
    assert got[("prompt 2", r(0, "2"), r(1, "2"))] == 0.5  # an exact tie is kept with label 0.5
    # ranking item 4 -> 3 pairs: 0>1 in 3 of 4, 0>2 in 4 of 4, 1>2 in 3 of 4
    assert got[("prompt r0", r(0, "r0"), r(1, "r0"))] == 0.75
    assert got[("prompt r0", r(0, "r0"), r(2, "r0"))] == 1.0
    assert got[("prompt r0", r(1, "r0"), r(2, "r0"))] == 0.75
    assert len(soft) == 6 and report.counts.get("label_half") == 1 and "g" not in {p.prompt for p in soft}
    hard, _ = load_pairs(str(out / "pairs.jsonl"))
    assert {(p.prompt, p.chosen) for p in hard} == {(k[0], k[1]) for k, v in got.items() if v > 0.5}
    assert all(p.label == 1.0 for p in hard)
    (ranking,), _ = load_rankings(str(out / "rankings.jsonl"))
    assert ranking.responses == [r(0, "r0"), r(1, "r0"), r(2, "r0")]  # mean positions 0.25, 1, 1.75
    # raw votes: the "votes" format, read by the data layer with the same labels
    from_votes, vreport = load_pairs(str(out / "votes.jsonl"))
    assert vreport.counts["votes"] == 16 and len(from_votes) == 4  # 3 pair items + the gold item
    raw = [json.loads(line) for line in (out / "ranking_votes.jsonl").read_text().splitlines()]
    assert [v["ranking"] for v in raw[0]["votes"]] == rankings and raw[0]["votes"][0]["confidence"] == 2
    assert counts["gold_left_out"] == 1 and counts["hard_ties_left_out"] == 1 and counts["pairs_from_rankings"] == 3
    # --include-gold and --min-votes
    counts = store.export(engine, str(out), include_gold=True, min_votes=5)
    assert counts["soft_pairs.jsonl"] == 0 and counts["below_min_votes"] == 5 and counts["votes.jsonl"] == 4
    counts = store.export(engine, str(out), include_gold=True)
    assert counts["soft_pairs.jsonl"] == 7


def test_thumbs_votes_status_and_kto_export(engine, db_url, tmp_path, capsys):
    # items 1-4: each response of 2 sampled prompts on its own; 5: a {prompt, completion} record; 6: gold (bad)
    new, report = read_items(write_jsonl(tmp_path / "samples.jsonl", sets(2)), thumbs=True)
    assert [it.kind for it in new] == ["thumbs"] * 4 and report.loaded == 2
    assert store.add_items(engine, new, 3) == {"added": 4, "duplicates": 0}
    chat = [{"role": "user", "content": "chat"}]
    add(engine, tmp_path, [{"prompt": chat, "completion": "one reply"}], replicas=3)
    add(engine, tmp_path, [{"prompt": "gold", "completion": "known bad", "label": False}], replicas=3, gold=True)
    a, b, c = people(engine, 3)
    plan = {1: "ggb", 2: "bbb", 3: "gb-", 4: "ggg", 5: "bgb", 6: "bgb"}  # "-": skipped, so item 3 ends 1 to 1
    for n, who in enumerate((a, b, c)):
        while (task := store.next_task(engine, who)) is not None:
            assert task.kind == "thumbs" and task.shown_order == [0] and len(task.shown) == 1
            with pytest.raises(store.Refused, match="choice must be good or bad"):
                store.submit_vote(engine, who, task.nonce, "left")
            want = plan[task.item_id][n]
            if want == "-":
                assert store.skip_task(engine, who, task.nonce) == "skipped"
            else:
                store.submit_vote(engine, who, task.nonce, {"g": "good", "b": "bad"}[want])
    s = store.status(engine)
    assert (s["items"], s["thumbs_items"], s["gold_items"], s["votes"], s["skips"]) == (6, 6, 1, 17, 1)
    assert s["complete_items"] == 5
    assert [p["gold_score"] for p in s["annotators"]] == [1.0, 0.0, 1.0]
    # agreeing pairs per item: 1/3, 1, 0, 1, 1/3, 1/3; 8 good and 9 bad of 17 votes
    t = s["thumbs_agreement"]
    p_e = (8 / 17) ** 2 + (9 / 17) ** 2
    assert t["items"] == 6 and t["pairwise_agreement"] == pytest.approx(0.5)
    assert t["fleiss_kappa"] == pytest.approx((0.5 - p_e) / (1 - p_e))
    assert s["agreement"]["items"] == 0
    assert main(["label", "status", "--db", db_url]) == 0
    out = capsys.readouterr().out
    assert "items: 6 (0 pairs, 0 rankings, 6 thumbs, 1 gold)" in out
    assert "agreement on 6 thumbs items with 2+ votes: pairwise 0.500" in out

    folder = tmp_path / "out"
    assert main(["label", "export", "--db", db_url, "--output-dir", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "out/kto.jsonl: 4 records" in printed and "out/thumbs_votes.jsonl: 6 records" in printed
    assert "thumbs ties left out: 1" in printed and "gold left out: 1" in printed
    kto = [json.loads(line) for line in (folder / "kto.jsonl").read_text().splitlines()]
    assert kto == [
        {"prompt": "prompt 0", "completion": "response 0 to 0", "label": True, "votes_good": 2, "votes_bad": 1},
        {"prompt": "prompt 0", "completion": "response 1 to 0", "label": False, "votes_good": 0, "votes_bad": 3},
        {"prompt": "prompt 1", "completion": "response 1 to 1", "label": True, "votes_good": 3, "votes_bad": 0},
        {"prompt": chat, "completion": "one reply", "label": False, "votes_good": 1, "votes_bad": 2},
    ]
    raw = [json.loads(line) for line in (folder / "thumbs_votes.jsonl").read_text().splitlines()]
    assert [(r["completion"], [v["choice"] for v in r["votes"]]) for r in raw][2] == ("response 0 to 1", ["good", "bad"])
    assert raw[5]["gold"] == "bad" and [v["annotator"] for v in raw[5]["votes"]] == ["ann0", "ann1", "ann2"]
    for name in ("pairs.jsonl", "votes.jsonl", "rankings.jsonl"):
        assert (folder / name).read_text() == ""  # only thumbs items go to kto.jsonl, and nowhere else
    counts = store.export(engine, str(folder), include_gold=True)
    assert counts["kto.jsonl"] == 5 and counts["thumbs_ties_left_out"] == 1


def test_export_without_thumbs_items_leaves_kto_jsonl_alone(engine, tmp_path):
    add(engine, tmp_path, sets(1), replicas=1)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "kto.jsonl").write_text("my own KTO data\n")
    counts = store.export(engine, str(folder))
    assert "kto.jsonl" not in counts and "thumbs_votes.jsonl" not in counts
    assert (folder / "kto.jsonl").read_text() == "my own KTO data\n" and not (folder / "thumbs_votes.jsonl").exists()


def test_invite_tokens_are_hashed_and_unique(engine):
    token = store.invite(engine, "ann")
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT token_hash FROM annotators")).scalar_one()
    assert token not in stored and stored == store.hash_token(token)
    assert store.annotator_by_token(engine, token).name == "ann"
    assert store.annotator_by_token(engine, token + "x") is None and store.annotator_by_token(engine, "") is None
    with pytest.raises(AlignkitError, match="exists already"):
        store.invite(engine, "ann")
    new = store.invite(engine, "ann", new_token=True)
    assert store.annotator_by_token(engine, token) is None and store.annotator_by_token(engine, new).name == "ann"


def test_cli_invite_prints_a_working_link(db_url, capsys):
    assert main(["label", "invite", "zoe", "--db", db_url, "--url", "http://example.test:9/"]) == 0
    out = capsys.readouterr().out
    link = out.splitlines()[0].split(": ", 1)[1]
    assert link.startswith("http://example.test:9/login?token=")
    engine = open_db(db_url)
    assert store.annotator_by_token(engine, link.split("token=")[1]).name == "zoe"
    engine.dispose()


# ----------------------------------------------------------------------------------------------------------
# the web app through HTTP, in process (test_label_web.py runs the real server and a browser)


def browser(engine, **app_options):
    """A browser of the app on `engine`: a test client that keeps cookies."""
    from fastapi.testclient import TestClient

    from alignkit.label.app import create_app

    return TestClient(create_app(engine, **app_options), follow_redirects=False)


def sign_in(client, token: str) -> None:
    """The sign-in as a person does it: open the personal link, then press "Sign in" on the page it shows."""
    page = client.get("/login", params={"token": token})
    assert page.status_code == 200, page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"token": token, "csrf": csrf})
    assert r.status_code == 303 and "alignkit_label" in client.cookies, r.text


def test_http_admin_page_shows_the_item_count(engine, tmp_path):
    """Issue 18, item 15: the progress line showed `<built-in method items of dict object at 0x...>`."""
    add(engine, tmp_path, sets(3), replicas=2)
    admin = browser(engine)
    sign_in(admin, store.invite(engine, "boss", admin=True))
    page = admin.get("/admin")
    assert page.status_code == 200
    assert "0 of 3 items complete (3 pairs, 0 rankings, 0 thumbs, 0 gold)" in page.text
    assert "built-in method" not in page.text and "0x" not in page.text


def test_http_invite_links_come_only_from_the_configured_url(engine):
    """Issue 18, item 16: the admin page's invite link was built from the request's Host header."""
    boss = store.invite(engine, "boss", admin=True)
    evil = {"host": "evil.example"}
    for base_url, name in [("https://labels.example/app/", "carol"), (None, "dave")]:
        admin = browser(engine, base_url=base_url)
        sign_in(admin, boss)
        page = admin.get("/admin", headers=evil).text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        invited = admin.post("/admin/invite", data={"csrf": csrf, "name": name}, headers=evil)
        assert invited.status_code == 200 and "evil.example" not in invited.text
        token = re.search(r'<code class="token">([^<]+)</code>', invited.text).group(1)
        assert store.annotator_by_token(engine, token).name == name
        links = re.findall(r'<code class="link">([^<]+)</code>', invited.text)
        if base_url:
            assert links == [f"https://labels.example/app/login?token={token}"]
            assert "<code>https://labels.example/app</code>" in page
        else:  # no address configured: no link, and the page says why
            assert links == [] and "No link was made: no address is configured for this app." in invited.text
            assert "No address is configured for this app" in page and "evil.example" not in page
    with pytest.raises(AlignkitError, match=r"--url 'ftp://labels.example': expected the app's address"):
        browser(engine, base_url="ftp://labels.example")


def test_http_a_link_signs_in_only_after_confirming_by_post(engine):
    """Issue 18, item 17 (login CSRF): GET /login?token= only shows a confirmation page; signing in is a POST
    whose CSRF token is bound to a pre-sign-in cookie of the same browser, so another site can not sign a
    visitor in as its own annotator (by a link, an image, or a form posted to /login)."""
    alice, mallory = store.invite(engine, "alice"), store.invite(engine, "mallory")
    victim = browser(engine)
    page = victim.get("/login", params={"token": mallory})  # a link planted by mallory
    assert page.status_code == 200 and "Sign in as mallory?" in page.text
    assert "alignkit_label" not in victim.cookies  # nobody is signed in yet
    assert 'method="post" action="/login"' in page.text and f'name="token" value="{mallory}"' in page.text
    assert "Sign in" in victim.get("/").text  # still signed out
    # a form posted from another site: without the browser's pre-sign-in cookie, or with mallory's own form
    # values (she can load the confirmation page herself), it is refused and signs nobody in
    attacker = browser(engine)
    forged = re.search(r'name="csrf" value="([^"]+)"', attacker.get("/login", params={"token": mallory}).text).group(1)
    for client, form in [(browser(engine), {"token": mallory, "csrf": forged}),
                         (victim, {"token": mallory, "csrf": forged}),
                         (victim, {"token": mallory}),
                         (victim, {"token": mallory, "csrf": "0" * 64})]:
        r = client.post("/login", data=form)
        assert r.status_code == 403 and "security token is not valid" in r.text
        assert "alignkit_label" not in client.cookies
    # alice's own link, confirmed on its page: signed in as alice
    sign_in(victim, alice)
    assert "Sign in" not in victim.get("/").text and "alice" in victim.get("/").text
    assert victim.get("/login", params={"token": alice}).status_code == 303  # already alice: straight on
    # signed in as alice, mallory's link asks first and says who is signed in; alice stays signed in
    page = victim.get("/login", params={"token": mallory})
    assert "Sign in as mallory?" in page.text and "signed in as <strong>alice</strong> now" in page.text
    assert store.annotator_by_token(engine, victim.cookies["alignkit_label"]).name == "alice"
    # the token pasted into the sign-in form of / works the same way, with that page's CSRF token
    paste = browser(engine)
    csrf = re.search(r'name="csrf" value="([^"]+)"', paste.get("/").text).group(1)
    assert paste.post("/login", data={"token": f" {alice} ", "csrf": csrf}).status_code == 303
    assert store.annotator_by_token(engine, paste.cookies["alignkit_label"]).name == "alice"
    # a bad token: refused on the link and in the form
    assert victim.get("/login", params={"token": "not-a-token"}).status_code == 403
    bad = browser(engine)
    csrf = re.search(r'name="csrf" value="([^"]+)"', bad.get("/").text).group(1)
    r = bad.post("/login", data={"token": "not-a-token", "csrf": csrf})
    assert r.status_code == 403 and "alignkit_label" not in bad.cookies


def test_http_head_is_answered_like_get(engine, tmp_path):
    """Issue 18, item 20: HEAD / answered 405."""
    add(engine, tmp_path, sets(1), replicas=1)
    client = browser(engine)
    client.get("/")  # the pre-sign-in cookie, so that both answers carry the same form
    for path in ["/", "/healthz", "/static/label.css", "/login?token=x"]:
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code != 405, path
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], path
        assert head.headers["content-length"] == str(len(get.content)), path
        assert head.headers["content-security-policy"] == get.headers["content-security-policy"], path
    sign_in(client, store.invite(engine, "ann"))
    assert client.head("/").status_code == 200 and client.head("/vote").status_code == 405


# ----------------------------------------------------------------------------------------------------------
# `label serve`: the port, the address, --url


def serve_cli(*args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "alignkit.cli.main", "label", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, **popen)


def files_in(folder) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_serve_on_a_port_in_use_is_one_line_exit_2(db_url, tmp_path):
    """Issue 18, item 18: the banner, then uvicorn's "address already in use", then exit 3. Now the port is
    taken before the database is opened or anything is printed."""
    engine = open_db(db_url, create=True)
    add(engine, tmp_path, sets(1))
    engine.dispose()
    before = files_in(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = serve_cli("--db", db_url, "--port", str(port))
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert out == "" and err.splitlines() == [
        f"alignkit label: error: port {port} on 127.0.0.1 is already in use (another `alignkit label serve`?); "
        "stop that program or choose another --port"]
    assert files_in(tmp_path) == before  # nothing written


@pytest.mark.parametrize("args, expected", [
    (["--host", "0.0.0.0"], ["alignkit label serve: warning: --host 0.0.0.0 is reachable from other machines"]),
    (["--host", "0.0.0.0", "--secure-cookies"], []),
    (["--host", "127.0.0.1"], []),
], ids=["all-addresses", "secure-cookies", "loopback"])
def test_serve_beyond_loopback_without_secure_cookies_warns(args, expected, tmp_path):
    """Issue 18, item 19: `--host 0.0.0.0` without --secure-cookies gave no warning that tokens and cookies
    cross the network in clear. One warning line on stderr, before the banner; the app still runs."""
    import httpx

    db = str(tmp_path / "label.db")
    engine = open_db(db, create=True)
    add(engine, tmp_path, sets(1))
    engine.dispose()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = serve_cli("--db", db, "--port", str(port), *args)
    try:
        banner = proc.stdout.readline()  # printed after the warning, once the app is built
        assert banner.startswith(f"labeling app on http://{args[1]}:{port} "), banner
        assert "no --url: invites on the admin page give tokens, not links" in banner
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).text == "ok"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGTERM), err  # uvicorn ends by raising the signal it caught again
    lines = err.splitlines()
    assert len(lines) == len(expected) and all(line.startswith(e) for line, e in zip(lines, expected, strict=True)), err
    if expected:
        assert "in clear" in lines[0] and "--secure-cookies" in lines[0]


@pytest.mark.parametrize("command", ["serve", "invite"])
@pytest.mark.parametrize("url, expected", [
    ("labels.example", "expected the app's address as annotators reach it"),
    ("http://labels.example/?x=1", "give only the address"),
    ("http://labels.example:99999", "not a valid address"),
])
def test_bad_url_is_refused_while_parsing(command, url, expected, tmp_path, capsys):
    db = tmp_path / "label.db"
    args = ["label", command, *(["ann"] if command == "invite" else []), "--db", str(db), "--url", url]
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if "error:" in ln]
    assert line.startswith(f"alignkit label {command}: error: argument --url: ") and expected in line, err
    assert not db.exists()


# ----------------------------------------------------------------------------------------------------------
# sample -> import -> label -> export -> train


def test_sample_import_label_export_train_gdpo(tiny_model, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Review of film {i}:"} for i in range(6)])
    samples = tmp_path / "samples.jsonl"
    assert main(["sample", "--model", tiny_model, "--prompts", prompts, "-k", "3", "--output", str(samples),
                 "--max-new-tokens", "12", "--seed", "1"]) == 0
    assert "prompts written" in capsys.readouterr().out
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) >= 4 and all(2 <= len(r["responses"]) <= 3 and len(set(r["responses"])) == len(r["responses"])
                                  for r in rows)
    db = str(tmp_path / "label.db")
    assert main(["label", "import", str(samples), "--db", db, "--per-item", "3"]) == 0
    engine = open_db(db)
    ids = people(engine, 3)
    for n, who in enumerate(ids):  # annotator 0 and 1 prefer the first canonical response, annotator 2 the last
        while (task := store.next_task(engine, who)) is not None:
            k = len(task.shown_order)
            canonical = list(range(k)) if n < 2 else list(reversed(range(k)))
            if task.kind == "pair":
                want = "ab"[canonical[0]]
                store.submit_vote(engine, who, task.nonce, "left" if "ab"[task.shown_order[0]] == want else "right")
            else:
                store.submit_vote(engine, who, task.nonce, ",".join(str(task.shown_order.index(x)) for x in canonical))
    engine.dispose()
    out = tmp_path / "labels"
    assert main(["label", "export", "--db", db, "--output-dir", str(out)]) == 0
    soft = [json.loads(line) for line in (out / "soft_pairs.jsonl").read_text().splitlines()]
    assert soft and all(math.isclose(p["label"], 2 / 3) for p in soft)
    train = tmp_path / "gdpo"
    assert main(["dpo", "--model", tiny_model, "--data", str(out / "soft_pairs.jsonl"), "--loss", "gdpo",
                 "--output-dir", str(train), "--max-steps", "2", "--batch-size", "4", "--no-progress"]) == 0
    info = json.loads((train / "run_info.json").read_text())
    assert info["train_data"]["skipped"] == 0
    metrics = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("split") != "eval" and math.isfinite(m["loss"]) for m in metrics if "loss" in m)


def test_sample_bad_options(tiny_model, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}])
    with pytest.raises(SystemExit) as stop:  # refused while parsing, before the model is looked at
        main(["sample", "--model", "m", "--prompts", prompts, "-k", "1", "--output", str(tmp_path / "o.jsonl")])
    assert stop.value.code == 2
    assert "argument -k/--k: must be at least 2, got 1" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": ""}\n')
    assert main(["sample", "--model", tiny_model, "--prompts", str(bad), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "bad.jsonl:1: field 'prompt': text is empty" in capsys.readouterr().err
    assert main(["sample", "--model", "m", "--prompts", prompts, "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "model 'm' not found" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_every_label_command_has_help():
    from alignkit.cli.main import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert "sample" in commands and "label" in commands
    label = commands["label"]._subparsers._group_actions[0].choices
    assert set(label) == {"import", "invite", "serve", "status", "export"}
    for name, sub in label.items():
        text_ = sub.format_help()
        assert "--db" in text_ and len(sub.description) > 40, name
        for action in sub._actions:
            assert action.help, (name, action.dest)
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Labeling app (`alignkit label`)")[1].split("\n## ")[0]
    for name in [*label, "alignkit sample"]:
        assert name in section

