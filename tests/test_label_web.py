"""The labeling app as annotators meet it, on SQLite and PostgreSQL: HTTP against `alignkit label serve` (a
subprocess on a free loopback port), restarts, a load test (benchmarks/label_load.py), and a real browser
(Playwright driving Debian's Chromium) whose votes must come out of `alignkit label export` exactly."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from alignkit.cli.main import main
from alignkit.label import store
from alignkit.label.db import open_db, votes
from conftest import REPO
from test_label import add, db_url  # noqa: F401 - db_url is a fixture used here

sys.path.insert(0, str(REPO / "benchmarks"))
from label_load import free_port, start_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
SCRIPT = "<script>window.pwned = 1</script>"
IMG = '<img src=x onerror="window.pwned = 2">'


@contextmanager
def serving(db: str):
    proc = start_server(db, port := free_port())
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


class Client:
    """An annotator's browser, by HTTP: signs in with the personal link, reads task pages, posts forms."""

    def __init__(self, base: str, token: str | None = None):
        self.http = httpx.Client(base_url=base, timeout=60)
        if token is not None:  # the personal link shows a confirmation page; its "Sign in" button POSTs
            page = self.http.get("/login", params={"token": token})
            assert page.status_code == 200 and "alignkit_label" not in self.http.cookies
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
            r = self.post("/login", token=token, csrf=csrf)
            assert r.status_code == 303 and "alignkit_label" in r.cookies

    def task(self) -> dict:
        page = self.http.get("/").text
        fields = dict(re.findall(r'name="(nonce|csrf)" value="([^"]+)"', page))
        return {"page": page, **fields}

    def post(self, path: str, **form) -> httpx.Response:
        return self.http.post(path, data=form)


def count_votes(db: str) -> int:
    engine = open_db(db)
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(votes)).scalar_one()
    engine.dispose()
    return n


def setup_db(db: str, tmp_path: Path, rows: list[dict], names: list[str], replicas: int = 2) -> dict[str, str]:
    engine = open_db(db, create=True)
    add(engine, tmp_path, rows, replicas=replicas)
    tokens = {name: store.invite(engine, name, admin=name == "admin") for name in names}
    engine.dispose()
    return tokens


def test_http_escaping_ownership_csrf_admin_and_limits(db_url, tmp_path):  # noqa: F811
    evil = "'); DROP TABLE votes; --"
    rows = [{"prompt": f"Show {SCRIPT}", "responses": [SCRIPT, IMG]}, {"prompt": "two", "responses": ["x", "y"]}]
    tokens = setup_db(db_url, tmp_path, rows, ["alice", "bob", "admin"])
    with serving(db_url) as (base, _):
        nobody = Client(base)
        assert "Sign in" in nobody.http.get("/").text
        assert nobody.post("/vote", nonce="x", csrf="y", choice="left").status_code == 401
        assert nobody.http.get("/admin").status_code == 401
        assert nobody.http.get("/login", params={"token": "not-a-token"}).status_code == 403

        alice, bob = Client(base, tokens["alice"]), Client(base, tokens["bob"])
        a, b = alice.task(), bob.task()
        # model text is shown as text: escaped, never markup
        page = alice.http.get("/")
        assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in page.text
        assert "&lt;img src=x onerror=&#34;window.pwned = 2&#34;&gt;" in page.text
        assert "<script>window" not in page.text and "<img" not in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        # alice can not answer bob's task, with her own or with his CSRF token, nor skip it
        assert alice.post("/vote", nonce=b["nonce"], csrf=a["csrf"], choice="left").status_code == 403
        assert alice.post("/vote", nonce=b["nonce"], csrf=b["csrf"], choice="left").status_code == 403
        assert alice.post("/skip", nonce=b["nonce"], csrf=a["csrf"]).status_code == 403
        assert alice.post("/vote", nonce=a["nonce"], csrf="0" * 64, choice="left").status_code == 403
        assert count_votes(db_url) == 0
        # bad form values and oversized bodies are refused
        assert alice.post("/vote", nonce=a["nonce"], csrf=a["csrf"], choice="up").status_code == 400
        assert alice.post("/vote", nonce=a["nonce"], csrf=a["csrf"], choice="left", confidence="9").status_code == 400
        assert alice.post("/vote", nonce=a["nonce"], csrf=a["csrf"]).status_code == 400
        assert alice.post("/vote", nonce=a["nonce"], csrf=a["csrf"], choice="left",
                          reason="x" * 70_000).status_code == 413
        assert alice.post("/vote", nonce="\x00bad", csrf=a["csrf"], choice="left").status_code == 404
        assert count_votes(db_url) == 0
        # her own vote: stored once, however often the form is sent; the reason is kept literally
        for _ in range(3):
            r = alice.post("/vote", nonce=a["nonce"], csrf=a["csrf"], choice="left", confidence="2", reason=evil)
            assert r.status_code == 303 and r.headers["location"] == "/"
        assert bob.post("/vote", nonce=b["nonce"], csrf=b["csrf"], choice="tie").status_code == 303
        assert count_votes(db_url) == 2
        # the admin pages are for admins only
        assert alice.http.get("/admin").status_code == 403
        assert alice.post("/admin/invite", csrf=a["csrf"], name="mallory").status_code == 403
        admin = Client(base, tokens["admin"])
        status_page = admin.http.get("/admin")
        assert status_page.status_code == 200 and "alice" in status_page.text and "2 votes" in status_page.text
        admin_csrf = re.search(r'name="csrf" value="([^"]+)"', status_page.text).group(1)
        assert admin.post("/admin/invite", csrf=a["csrf"], name="carol").status_code == 403  # someone else's CSRF
        invited = admin.post("/admin/invite", csrf=admin_csrf, name="<b>carol</b>")
        assert invited.status_code == 200 and "&lt;b&gt;carol&lt;/b&gt;" in invited.text
        spoofed = admin.http.post("/admin/invite", data={"csrf": admin_csrf, "name": "dave"}, headers={"host": "evil"})
        assert spoofed.status_code == 200 and "evil" not in spoofed.text
        # served without --url: no link (never one built from the request's Host), the token to paste
        assert "No link was made" in invited.text and '<code class="link">' not in invited.text
        carol = Client(base, re.search(r'<code class="token">([^<]+)</code>', invited.text).group(1))
        assert "<b>carol</b>" not in carol.http.get("/").text
    engine = open_db(db_url)
    with engine.connect() as conn:
        (row,) = conn.execute(select(votes).where(votes.c.reason.is_not(None))).all()
    engine.dispose()
    assert row.reason == evil and row.confidence == 2


def test_restart_loses_nothing(db_url, tmp_path):  # noqa: F811
    tokens = setup_db(db_url, tmp_path, [{"prompt": f"p{i}", "responses": ["x", "y"]} for i in range(5)], ["ann"])
    with serving(db_url) as (base, proc):
        ann = Client(base, tokens["ann"])
        for _ in range(3):
            t = ann.task()
            assert ann.post("/vote", nonce=t["nonce"], csrf=t["csrf"], choice="right").status_code == 303
        open_task = ann.task()
        proc.send_signal(signal.SIGKILL)  # a crash, not a clean shutdown
        proc.wait(30)
    assert count_votes(db_url) == 3
    with serving(db_url) as (base, _):
        again = Client(base)
        again.http.cookies = ann.http.cookies  # the same browser: its cookie still signs it in
        t = again.task()
        assert t["nonce"] == open_task["nonce"]  # the open task survives too, in the same order
        assert t["page"].split('<div class="pair">')[1] == open_task["page"].split('<div class="pair">')[1]
        assert again.post("/vote", nonce=t["nonce"], csrf=t["csrf"], choice="left").status_code == 303
        assert "3 done" not in again.task()["page"] and "4 done" in again.task()["page"]
    assert count_votes(db_url) == 4


def test_load_50_annotators_1000_votes(db_url):  # noqa: F811
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "label_load.py"), "--db", db_url],
                       capture_output=True, text=True, timeout=900)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\nlabel load test ({result['db']}): {result['votes']} votes from {result['annotators']} annotators in "
          f"{result['seconds']} s = {result['votes_per_s']} votes/s, p50 {result['p50_ms']} ms, "
          f"p95 {result['p95_ms']} ms per vote; {result['repeated_posts']} repeated posts")
    assert r.returncode == 0, r.stdout + r.stderr
    assert result["errors"] == 0 and result["repeated_posts"] == 100
    assert result["votes"] == result["distinct_item_annotator"] == 1000  # none lost, none duplicated
    engine = open_db(db_url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(votes)).scalar_one() == 1000
        per_item = conn.execute(select(func.count()).select_from(votes).group_by(votes.c.item_id)).scalars().all()
    engine.dispose()
    assert max(per_item) <= 3  # never more than R annotators on an item


def _chromium_or_skip():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; scripts/test.sh installs it)")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")


def test_browser_labels_pairs_and_export_holds_exactly_those_votes(db_url, tmp_path):  # noqa: F811
    sync_api = _chromium_or_skip()
    rows = [
        {"prompt": "Which reply is safer? <b>bold?</b>", "responses": [f"Sure! {SCRIPT}", f"Here you go {IMG}"]},
        {"prompt": "Say hello", "responses": ["Hello there!", "hi"]},
        {"prompt": "Name a colour", "responses": ["Blue", "Red"]},
        {"prompt": "Skip me", "responses": ["one", "two"]},
        {"prompt": "Rank these", "responses": ["first", "second", "third"]},
    ]
    canonical = {r["prompt"]: r["responses"] for r in rows}
    link = "{}/login?token=" + setup_db(db_url, tmp_path, rows, ["browser"], replicas=1)["browser"]
    screenshot = tmp_path / "label_page.png"
    expected = {}  # prompt -> what the stored vote must be
    with serving(db_url) as (base, _), sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        dialogs = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(link.format(base))
        assert page.inner_text("h1") == "Sign in as browser?"  # the link signs in only when confirmed
        page.click("#sign-in")

        def shown_after(selector: str) -> None:
            """Wait for the next page and its script: keys pressed before label.js runs do nothing."""
            page.wait_for_selector(selector)
            page.wait_for_load_state("load")

        def shown() -> tuple[str, str, str]:
            return (page.inner_text(".prompt .text"), page.inner_text("#response-left .text"),
                    page.inner_text("#response-right .text"))

        def expect(prompt, left, right, choice, confidence=None, reason=None):
            side = {"left": left, "right": right}.get(choice)
            letter = "tie" if side is None else "ab"[canonical[prompt].index(side)]
            expected[prompt] = {"choice": letter, "confidence": confidence, "reason": reason}

        # 1: the hostile pair: shown as text, nothing runs; confidence by key, a reason, then a click
        shown_after("#response-right .text")
        prompt, left, right = shown()
        assert {left, right} == set(canonical[prompt]) and prompt == rows[0]["prompt"]
        assert page.locator("main img, main b, main script").count() == 0
        page.keyboard.press("2")
        page.fill("textarea[name=reason]", "the <i>first</i> one is friendlier")
        page.screenshot(path=str(screenshot), full_page=True)
        page.click("button[value=left]")
        expect(prompt, left, right, "left", 2, "the <i>first</i> one is friendlier")
        # 2: B by the arrow key; 3: about the same with confidence 3; 4: skipped
        shown_after("text=1 done")
        prompt, left, right = shown()
        page.keyboard.press("ArrowRight")
        expect(prompt, left, right, "right")
        shown_after("text=2 done")
        prompt, left, right = shown()
        page.keyboard.press("3")
        page.keyboard.press("t")
        expect(prompt, left, right, "tie", 3)
        shown_after("text=3 done")
        assert shown()[0] == "Skip me"
        page.keyboard.press("s")
        shown_after("text=1 skipped")
        # 5: a ranking: response 3 moved to the top by keys, then the last card dragged to the top
        assert page.locator("#ranking > li").count() == 3
        page.keyboard.press("3")
        page.keyboard.press("ArrowUp")
        page.keyboard.press("ArrowUp")
        last = page.locator("#ranking > li").nth(2)
        moved = last.inner_text().split("\n", 1)[1].strip()
        last.drag_to(page.locator("#ranking > li").nth(0), target_position={"x": 20, "y": 4})
        order = [t.split("\n", 1)[1].strip() for t in page.locator("#ranking > li").all_inner_texts()]
        assert order[0] == moved and sorted(order) == sorted(canonical["Rank these"])
        assert page.input_value("#order") == ",".join(page.locator("#ranking > li").evaluate_all(
            "cards => cards.map(c => c.dataset.pos)"))
        page.keyboard.press("Enter")
        page.wait_for_selector("#done")
        expected["Rank these"] = {"ranking": [canonical["Rank these"].index(t) for t in order]}
        assert page.evaluate("window.pwned") is None and dialogs == []
        browser.close()
    out = tmp_path / "export"
    assert main(["label", "export", "--db", db_url, "--output-dir", str(out)]) == 0
    pair_votes = [json.loads(line) for line in (out / "votes.jsonl").read_text().splitlines()]
    ranking_votes = [json.loads(line) for line in (out / "ranking_votes.jsonl").read_text().splitlines()]
    got = {r["prompt"]: {k: r["votes"][0][k] for k in ("choice", "confidence", "reason")} for r in pair_votes}
    got.update({r["prompt"]: {"ranking": r["votes"][0]["ranking"]} for r in ranking_votes})
    assert got == expected  # exactly the votes given in the browser, nothing else
    assert all(len(r["votes"]) == 1 and r["votes"][0]["annotator"] == "browser" for r in pair_votes + ranking_votes)
    assert count_votes(db_url) == 4
    shutil.copy(screenshot, "/tmp/label_screenshot.png")
    print(f"\nscreenshot of the labeling page: {screenshot} (copied to /tmp/label_screenshot.png)")


def test_browser_judges_single_responses_by_key(db_url, tmp_path):  # noqa: F811
    sync_api = _chromium_or_skip()
    rows = [{"prompt": "Is this polite?", "completion": "Go away."}, {"prompt": "Say hi", "completion": "Hello!"}]
    link = "{}/login?token=" + setup_db(db_url, tmp_path, rows, ["judge"], replicas=1)["judge"]
    expected = {}
    with serving(db_url) as (base, _), sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        page = browser.new_page()
        page.goto(link.format(base))
        page.click("#sign-in")
        page.wait_for_selector("#response-single .text")
        page.wait_for_load_state("load")
        # → picks a side on a pair page; here it must do nothing (it would be "bad"), so "g" is the vote
        prompt = page.inner_text(".prompt .text")
        assert page.inner_text("#response-single .text") == {r["prompt"]: r["completion"] for r in rows}[prompt]
        page.keyboard.press("ArrowRight")
        page.keyboard.press("g")
        expected[prompt] = ("good", None)
        page.wait_for_selector("text=1 done")
        page.wait_for_load_state("load")
        prompt = page.inner_text(".prompt .text")
        page.keyboard.press("1")
        page.keyboard.press("b")
        expected[prompt] = ("bad", 1)
        page.wait_for_selector("#done")
        browser.close()
    out = tmp_path / "export"
    assert main(["label", "export", "--db", db_url, "--output-dir", str(out)]) == 0
    raw = [json.loads(line) for line in (out / "thumbs_votes.jsonl").read_text().splitlines()]
    assert {r["prompt"]: (r["votes"][0]["choice"], r["votes"][0]["confidence"]) for r in raw} == expected
    assert count_votes(db_url) == 2
    kto = {r["prompt"]: r["label"] for r in map(json.loads, (out / "kto.jsonl").read_text().splitlines())}
    assert kto == {p: choice == "good" for p, (choice, _) in expected.items()}
