"""Load on the labeling app over loopback: N concurrent annotators submit V votes in total to a running
`alignkit label serve`; afterwards the database must hold exactly V votes, none lost or duplicated. Prints one
JSON object: {votes, expected, seconds, votes_per_s, p50_ms, p95_ms, db, ...}.

    python benchmarks/label_load.py                        # SQLite in a temporary folder, 50 annotators, 1,000 votes
    python benchmarks/label_load.py --db postgresql://postgres@127.0.0.1:5432/bench    (an empty database)

Each annotator is a thread with its own HTTP client, signed in through their personal link. A vote is GET /
(the task page: nonce and CSRF token) then POST /vote; the latency is the POST's, and the server commits the
vote before it answers. Every 10th vote is posted a second time, as a browser retry would: the repeat must
store nothing. The exit status is 1 when the database does not hold exactly V votes or a request failed.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select

from alignkit.label import store
from alignkit.label.db import open_db, votes
from alignkit.label.importer import NewItem

NONCE = re.compile(r'name="nonce" value="([^"]+)"')
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: str, port: int) -> subprocess.Popen:
    """`alignkit label serve` on 127.0.0.1:port, returned once /healthz answers."""
    proc = subprocess.Popen([sys.executable, "-m", "alignkit.cli.main", "label", "serve", "--db", db,
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not answer within 120 s")


def annotator(base: str, token: str, n_votes: int, seed: int, latencies: list, errors: list, counts: dict) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=base, timeout=120) as client:
        page = client.get("/login", params={"token": token}).text  # the link shows a confirmation form
        client.post("/login", data={"token": token, "csrf": CSRF.search(page).group(1)})
        for i in range(n_votes):
            page = client.get("/").text
            nonce, csrf = NONCE.search(page), CSRF.search(page)
            if nonce is None or csrf is None:
                errors.append(f"no task page for vote {i + 1}")
                return
            form = {"nonce": nonce.group(1), "csrf": csrf.group(1), "choice": rng.choice(["left", "right", "tie"]),
                    "confidence": str(rng.randint(1, 3))}
            start = time.perf_counter()
            r = client.post("/vote", data=form)
            latencies.append(time.perf_counter() - start)
            if r.status_code != 303:
                errors.append(f"POST /vote answered {r.status_code}")
            if i % 10 == 0:  # a retry of the same form: accepted, stores nothing
                counts["repeats"] += 1
                if client.post("/vote", data=form).status_code != 303:
                    errors.append("a repeated POST /vote was not accepted")


def run(db: str | None, n_annotators: int, n_votes: int, per_item: int) -> dict:
    tmp = tempfile.TemporaryDirectory()
    db = db or str(Path(tmp.name) / "label.db")
    engine = open_db(db, create=True)
    n_items = math.ceil(n_votes / per_item) + n_annotators
    new = [NewItem("pair", f"Question {i}: which answer is better?", [f"answer one to {i}", f"answer two to {i}"],
                   None, f"bench:{i}") for i in range(n_items)]
    store.add_items(engine, new, per_item)
    tokens = [store.invite(engine, f"load-{i}") for i in range(n_annotators)]
    port = free_port()
    server = start_server(db, port)
    latencies, errors, counts = [], [], {"repeats": 0}
    shares = [n_votes // n_annotators + (i < n_votes % n_annotators) for i in range(n_annotators)]
    threads = [threading.Thread(target=annotator, args=(f"http://127.0.0.1:{port}", token, share, i, latencies,
                                                         errors, counts)) for i, (token, share) in enumerate(zip(tokens, shares, strict=True))]
    try:
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(30)
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(votes)).scalar_one()
        distinct = conn.execute(select(func.count()).select_from(
            select(votes.c.item_id, votes.c.annotator_id).distinct().subquery())).scalar_one()
    engine.dispose()
    tmp.cleanup()
    latencies.sort()
    return {"votes": stored, "expected": n_votes, "distinct_item_annotator": distinct, "annotators": n_annotators,
            "repeated_posts": counts["repeats"], "errors": len(errors), "first_errors": errors[:3],
            "seconds": round(seconds, 2), "votes_per_s": round(n_votes / seconds, 1),
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
            "p95_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1),
            "db": "postgresql" if db.startswith("postgres") else "sqlite"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", help="an empty labeling database (default: SQLite in a temporary folder)")
    parser.add_argument("--annotators", type=int, default=50, help="concurrent annotators (default: 50)")
    parser.add_argument("--votes", type=int, default=1000, help="votes in total (default: 1000)")
    parser.add_argument("--per-item", type=int, default=3, help="annotators per item (default: 3)")
    args = parser.parse_args()
    result = run(args.db, args.annotators, args.votes, args.per_item)
    print(json.dumps(result))
    ok = result["votes"] == result["expected"] == result["distinct_item_annotator"] and not result["errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
