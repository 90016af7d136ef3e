"""Judges: rubrics, the verdict cache, verdict reading, agreement, the pair bookkeeping (by hand), the local judge
against the model's own next-token distribution, and the server judge against a real server on loopback
(`alignkit serve`, and small HTTP servers that fail in each way a server can)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignkit.cli.main import main
from alignkit.data import load_pairs
from alignkit.errors import AlignkitError
from alignkit.judges import (
    Verdict,
    VerdictCache,
    agreement,
    judge_pairs,
    label_files,
    load_rubric,
    rank_sets,
    set_pairs,
)
from alignkit.judges.local import LocalJudge, letter_ids
from alignkit.judges.server import read_verdict
from conftest import write_jsonl


def test_rubric_fills_every_slot_and_keeps_braces_in_the_texts(tmp_path):
    r = load_rubric("helpful")
    text = r.fill("Say {b}", "I said {a}", "no {prompt}")
    assert "Request:\nSay {b}" in text and "Response A:\nI said {a}" in text and "Response B:\nno {prompt}" in text
    chat = r.fill([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "x", "y")
    assert "User: hi\nAssistant: yo" in chat
    f = tmp_path / "r.txt"
    f.write_text("Q {prompt} | {a} | {b} | {a} | {criterion} {{literal}}")
    assert load_rubric(str(f), "brevity").fill("p", "1", "2") == "Q p | 1 | 2 | 1 | brevity {{literal}}"
    f.write_text("only {prompt} and {a}")
    with pytest.raises(AlignkitError, match=r"lacks the placeholder\(s\) \{b\}"):
        load_rubric(str(f))
    with pytest.raises(AlignkitError, match="--criterion"):
        load_rubric("criterion")
    with pytest.raises(AlignkitError, match="neither a built-in rubric"):
        load_rubric(str(tmp_path / "missing.txt"))


def test_cache_survives_a_line_cut_short(tmp_path):
    path = tmp_path / "c.jsonl"
    c = VerdictCache(path)
    c.put([{"key": "k1", "p": 0.25, "mass": 0.9}, {"key": "k2", "p": None, "mass": None, "why": "x"}])
    with open(path, "a") as f:
        f.write('{"key": "k3", "p": 0.')  # a write the kill cut short
    c2 = VerdictCache(path)
    assert c2.damaged == 1 and c2.get("k1")["p"] == 0.25 and c2.get("k2")["p"] is None and c2.get("k3") is None
    c2.put([{"key": "k3", "p": 0.75, "mass": 1.0}])
    c3 = VerdictCache(path)
    assert c3.damaged == 1 and c3.get("k3")["p"] == 0.75 and len(c3.entries) == 3


def _choice(content=None, tops=None):
    tokens = None
    if tops is not None:
        tokens = [SimpleNamespace(token=tops[0][0], logprob=tops[0][1],
                                  top_logprobs=[SimpleNamespace(token=t, logprob=lp) for t, lp in tops])]
    return SimpleNamespace(message=SimpleNamespace(content=content),
                           logprobs=SimpleNamespace(content=tokens) if tokens is not None else None)


def test_read_verdict_by_hand():
    v = read_verdict(_choice("A", [("A", math.log(0.5)), (" a", math.log(0.1)), ("B", math.log(0.2)), ("The", -1.0)]))
    assert v.p == pytest.approx(0.6 / 0.8, abs=1e-12) and v.mass == pytest.approx(0.8, abs=1e-12)
    assert read_verdict(_choice("B.")).p == 0.0 and read_verdict(_choice(" A")).p == 1.0
    assert read_verdict(_choice("The", [("The", -0.1), ("It", -3.0)])).p is None  # neither letter listed
    for content in ("Both are fine", "Absolutely", ""):
        v = read_verdict(_choice(content))
        assert v.p is None and v.why.startswith("not an answer")
    assert read_verdict(SimpleNamespace(message=None, logprobs=None)).why.startswith("malformed")


def test_agreement_by_hand():
    a = agreement([0.9, 0.4, 0.5, None, 0.7], [1.0, 1.0, 0.6, 1.0, 0.8], clear=0.75, seed=3)
    assert a["pairs"] == 4 and a["accuracy"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert a["clear_pairs"] == 3 and a["accuracy_clear"] == pytest.approx(2 / 3)
    # the correlation is Pearson's over the randomly oriented pairs: recompute it with numpy's
    import random

    import numpy as np

    rng = random.Random(3)
    xs, ys = [], []
    for p, lab in [(0.9, 1.0), (0.4, 1.0), (0.5, 0.6), (0.7, 0.8)]:
        flip = rng.random() < 0.5
        xs.append(1 - p if flip else p)
        ys.append(1 - lab if flip else lab)
    assert a["correlation"] == pytest.approx(float(np.corrcoef(xs, ys)[0, 1]), abs=1e-12)


class _Fixed:
    """A judge by rule: it prefers the longer response, with a bias towards the first one shown."""

    id = "fixed"
    chunk = 3

    def __init__(self):
        self.seen = []

    def judge(self, texts):
        self.seen += texts
        out = []
        for t in texts:
            first = t.split("Response A:\n")[1].split("\n\nResponse B:")[0]
            second = t.split("Response B:\n")[1].split("\n\n")[0]
            if first == "silent":
                out.append(Verdict(None, None, "not an answer: 'hm'"))
                continue
            p = 0.8 if len(first) > len(second) else 0.4
            out.append(Verdict(p, 0.5))
        return out


def test_judge_pairs_both_orders_votes_cache_and_files(tmp_path):
    prompts, a, b = ["p1", "p2", "p3"], ["long answer", "x", "silent"], ["short", "longer one", "silent too"]
    judge, cache = _Fixed(), VerdictCache(tmp_path / "c.jsonl")
    j = judge_pairs(judge, prompts, a, b, rubrics=[load_rubric("helpful")], cache=cache, progress=False)
    assert len(judge.seen) == 6 and j.counts["judged"] == 6 and j.counts["cached"] == 0
    # pair 1: a longer; shown ab p=0.8, shown ba (b first, shorter) p=0.4 -> P(a)=0.6; mean 0.7
    assert j.p_a[0] == pytest.approx(0.7) and [v["choice"] for v in j.votes[0]] == ["a", "a"]
    # pair 2: b longer; ab p=0.4 -> P(a)=0.4; ba p=0.8 -> P(a)=0.2; mean 0.3
    assert j.p_a[1] == pytest.approx(0.3) and [v["choice"] for v in j.votes[1]] == ["b", "b"]
    # pair 3: "silent" shown first is a non-answer; shown second, "silent too" is longer -> P(a) = 1 - 0.8
    assert j.p_a[2] == pytest.approx(0.2) and len(j.votes[2]) == 1 and j.counts["non-answer: not an answer"] == 1
    assert j.consistency == 1.0 and j.answer_mass == pytest.approx(0.5)
    again = judge_pairs(judge, prompts, a, b, rubrics=[load_rubric("helpful")], cache=VerdictCache(tmp_path / "c.jsonl"),
                        progress=False)
    assert len(judge.seen) == 6 and again.counts["cached"] == 6 and again.p_a == j.p_a

    files = label_files(prompts, a, b, j)
    soft = files["soft_pairs.jsonl"]
    assert [(r["chosen"], r["label"]) for r in soft] == [("long answer", pytest.approx(0.7)),
                                                          ("longer one", pytest.approx(0.7)),
                                                          ("silent too", pytest.approx(0.8))]
    for name in ("votes.jsonl", "soft_pairs.jsonl", "pairs.jsonl"):
        write_jsonl(tmp_path / name, files[name])
    pairs, _ = load_pairs(str(tmp_path / "votes.jsonl"))
    assert [p.chosen for p in pairs] == ["long answer", "longer one", "silent too"]
    soft_pairs, _ = load_pairs(str(tmp_path / "soft_pairs.jsonl"))
    assert [p.label for p in soft_pairs] == [pytest.approx(x) for x in (0.7, 0.7, 0.8)]


def test_sets_give_every_pair_and_a_ranking():
    sets = [["a", "b", "c", "b", " "], ["x"]]
    pairs = set_pairs(sets)
    assert pairs == [(0, 0, 1), (0, 0, 2), (0, 1, 2)]
    ranked = rank_sets(sets, pairs, [0.2, 0.9, 0.3])  # b beats a (0.8), a beats c (0.9), c beats b (0.7)
    # wins: a 0.2+0.9 = 1.1, b 0.8+0.3 = 1.1, c 0.1+0.7 = 0.8 -> a and b tie, the earlier first
    assert ranked == [["a", "b", "c"], None]


@pytest.fixture(scope="module")
def ab_judge(tiny_model, tmp_path_factory):
    """The tiny model with its output rows for the letters A and B tilted towards the hidden states a rubric
    gives, so that it answers with a letter (most of its probability on A or B) that depends on the text."""
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    plain = LocalJudge(tiny_model)
    ids = [plain.prompt_ids(load_rubric("helpful").fill(f"request {i}", "yes " * i, "no")) for i in range(6)]
    with torch.no_grad():
        h = torch.stack([model.model(torch.tensor([i])).last_hidden_state[0, -1] for i in ids]).mean(0)
        head = model.get_output_embeddings().weight
        for letter in ("A", "B"):
            for t in letter_ids(tok, letter):
                head[t] += 12.0 * h / h.norm() ** 2
    out = tmp_path_factory.mktemp("ab_judge")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_local_judge_reads_the_models_own_letter_probabilities(ab_judge):
    judge = LocalJudge(ab_judge)
    texts = [load_rubric("helpful").fill("Rate this.", "good " * n, "bad") for n in (1, 3, 7)]
    got = judge.judge(texts)
    tok = AutoTokenizer.from_pretrained(ab_judge)
    model = AutoModelForCausalLM.from_pretrained(ab_judge).eval()
    a_ids, b_ids = letter_ids(tok, "A"), letter_ids(tok, "B")
    for text, v in zip(texts, got, strict=True):
        ids = judge.prompt_ids(text)
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
        pa, pb = float(probs[a_ids].sum()), float(probs[b_ids].sum())
        # float32 forwards along two code paths: log-probs agree to ~1e-5, so probabilities in [0, 1] to 1e-4
        assert v.p == pytest.approx(pa / (pa + pb), abs=1e-4) and v.mass == pytest.approx(pa + pb, abs=1e-4)
        assert v.mass > 0.5  # the tilted judge answers with a letter


def _serve(model: str, port: int = 0) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "alignkit.cli.main", "serve", "--model", model, "--port", str(port),
                             "--served-name", "judge"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, line.strip().rsplit(" at ", 1)[1]


def _sets(path: Path, n: int) -> str:
    return write_jsonl(path, [{"prompt": f"Review film {i}.", "responses": ["good " * (i % 3 + 1), "bad", "fine ok"]}
                              for i in range(n)])


def test_server_judge_round_trips_real_verdicts_and_resumes_after_a_kill(ab_judge, tmp_path, capsys):
    """Verdicts through `alignkit serve` equal the local judge's on the same model; a server killed mid-run ends the
    run with one line and exit 2, and the rerun against a restarted server judges only what is missing."""
    data = _sets(tmp_path / "sets.jsonl", 16)  # 48 pairs, 96 presentations
    proc, url = _serve(ab_judge)
    try:
        rc = main(["judge", "--judge", ab_judge, "--data", data, "--output-dir", str(tmp_path / "local"),
                   "--judge-cache", str(tmp_path / "local.jsonl"), "--no-progress", "--max-records", "3"])
        assert rc == 0
        rc = main(["judge", "--judge-url", url, "--judge-model", "judge", "--data", data, "--output-dir",
                   str(tmp_path / "served"), "--judge-cache", str(tmp_path / "served.jsonl"), "--no-progress",
                   "--max-records", "3"])
        assert rc == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    local = [json.loads(x) for x in (tmp_path / "local" / "soft_pairs.jsonl").read_text().splitlines()]
    served = [json.loads(x) for x in (tmp_path / "served" / "soft_pairs.jsonl").read_text().splitlines()]
    assert len(local) == len(served) == 9
    for x, y in zip(local, served, strict=True):
        # the server lists its top 20 tokens: the letters' spellings are among them, so P(A)/(P(A)+P(B)) agrees
        assert (x["chosen"], x["rejected"]) == (y["chosen"], y["rejected"]) or abs(x["label"] - 0.5) < 1e-3
        assert x["label"] == pytest.approx(y["label"], abs=1e-3)

    # a kill mid-run: the judge runs in its own process against a server that is killed once verdicts arrive
    proc, url = _serve(ab_judge)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    cache = tmp_path / "kill.jsonl"
    cmd = [sys.executable, "-m", "alignkit.cli.main", "judge", "--judge-url", url, "--judge-model", "judge", "--data",
           data, "--output-dir", str(tmp_path / "kill"), "--judge-cache", str(cache), "--no-progress",
           "--judge-concurrency", "1", "--judge-retries", "0"]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (cache.exists() and cache.read_text().count("\n") >= 8):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        out, err = run.communicate(timeout=120)
    finally:
        proc.kill()
        run.kill()
    assert run.returncode == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("alignkit judge: error: cannot reach judge server") and "a rerun resumes" in last
    kept = len(VerdictCache(cache).entries)
    assert 8 <= kept < 96
    proc, url = _serve(ab_judge, port)
    try:
        assert main(cmd[3:]) == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    report = json.loads((tmp_path / "kill" / "judge_report.json").read_text())
    assert report["counts"]["cached"] == kept and report["counts"]["judged"] == 96 - kept
    lines = cache.read_text().splitlines()
    keys = [json.loads(x)["key"] for x in lines if x.strip()]
    assert len(keys) == len(set(keys)) == 96  # nothing judged twice, nothing lost
    votes = [json.loads(x) for x in (tmp_path / "kill" / "votes.jsonl").read_text().splitlines()]
    assert len(votes) == 48 and all(len(v["votes"]) == 2 for v in votes)


class _Faulty(BaseHTTPRequestHandler):
    mode = "500"

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        mode = type(self).mode
        if mode == "slow":
            time.sleep(3)
        if mode == "500":
            body, status = b'{"error": {"message": "the judge fell over"}}', 500
        elif mode == "garbage":
            body, status = b"this is not json", 200
        elif mode == "words":
            body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Well"}, "finish_reason": "length",
                 "logprobs": None}]}).encode()
            status = 200
        else:
            body, status = b"{}", 200
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass


@pytest.fixture
def faulty():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Faulty)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("mode", "rc", "says"), [
    ("500", 2, "answered HTTP 500: the judge fell over"),
    ("slow", 2, "did not answer within 0.5 s (1 tries)"),
    ("garbage", 0, "6 non-answers skipped (malformed answer 6)"),
    ("words", 0, "6 non-answers skipped (not an answer 6)"),
])
def test_server_faults_end_with_one_line_or_a_counted_skip(faulty, mode, rc, says, tmp_path, capsys):
    _Faulty.mode = mode
    url = f"http://127.0.0.1:{faulty.server_address[1]}/v1"
    data = _sets(tmp_path / "sets.jsonl", 1)
    got = main(["judge", "--judge-url", url, "--judge-model", "m", "--data", data, "--output-dir", str(tmp_path / "o"),
                "--judge-cache", str(tmp_path / "c.jsonl"), "--no-progress", "--judge-retries", "0",
                "--judge-timeout", "0.5"] + (["--judge-concurrency", "1"] if mode != "garbage" else []))
    out, err = capsys.readouterr()
    assert got == rc
    assert says in (err if rc else out)
    if rc:
        assert len([x for x in err.splitlines() if x.startswith("alignkit judge: error")]) == 1


def test_unreachable_server_and_bad_judge_settings(tmp_path, capsys):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    data = _sets(tmp_path / "sets.jsonl", 1)
    base = ["judge", "--data", data, "--output-dir", str(tmp_path / "o"), "--no-progress"]
    assert main(base + ["--judge-url", f"http://127.0.0.1:{port}/v1", "--judge-model", "m", "--judge-retries", "0"]) == 2
    assert "cannot reach judge server" in capsys.readouterr().err
    assert main(base + ["--judge-url", f"http://127.0.0.1:{port}/v1"]) == 2
    assert "--judge-url needs --judge-model" in capsys.readouterr().err
    assert main(base + ["--judge", str(tmp_path / "no_model")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(base + ["--judge", "x", "--rubric", "criterion"]) == 2
    assert "--criterion" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "pairs.jsonl").write_text("my own labels\n")
    assert main(["judge", "--data", data, "--output-dir", str(tmp_path / "mine"), "--judge", "smollm2-135m-instruct"]) == 2
    assert "not written by alignkit judge" in capsys.readouterr().err
    assert (tmp_path / "mine" / "pairs.jsonl").read_text() == "my own labels\n"


def test_eval_with_a_judge_and_no_gold(tiny_model, ab_judge, tmp_path, capsys):
    """`alignkit eval --judge`: the judge's win rate against the reference, its length-controlled form and the
    position consistency, without a gold scorer; every sample carries its verdict into the HTML report."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Tell me about film {i}."} for i in range(6)])
    out = tmp_path / "eval"
    rc = main(["eval", "--model", f"same={tiny_model}", "--reference", tiny_model, "--prompts", prompts,
               "--max-new-tokens", "6", "--samples", "2", "--judge", ab_judge, "--judge-cache", str(tmp_path / "c.jsonl"),
               "--output-dir", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "judge win (95% CI)" in table and "gold" not in table.splitlines()[0]
    res = json.loads((out / "results.json").read_text())
    j = res["models"]["same"]["judge"]
    samples = res["models"]["same"]["samples"]
    assert len(samples) == 12 and all(0.0 <= s["judge"] <= 1.0 and "gold" not in s for s in samples)
    # the policy is the reference with the same sampling noise: identical responses, so both orders are one and the
    # same presentation, P(policy better) = (p + 1 - p) / 2 = 1/2 exactly, and the judge is as inconsistent as it
    # is decided
    assert all(s["response"] == r["response"] for s, r in zip(samples, res["models"]["reference"]["samples"], strict=True))
    assert all(s["judge"] == pytest.approx(0.5, abs=1e-12) for s in samples)
    assert j["win_rate"] == pytest.approx(0.5, abs=1e-12) and j["lc_win_rate"] == pytest.approx(0.5, abs=1e-12)
    assert 0.0 <= j["consistency"] <= 1.0
    assert "judge 0." in (out / "report.html").read_text() and (out / "frontier.png").exists()


def test_quick_demo_with_a_judge_as_annotator(ab_judge, tmp_path):
    """`alignkit demo --quick --annotator judge:MODEL`: the judge labels every pair of the samples, and the reward
    model and the methods train on its votes and are evaluated as usual."""
    out = tmp_path / "demo"
    rc = main(["demo", "--quick", "--methods", "dpo,rloo", "--annotator", f"judge:{ab_judge}", "--output-dir", str(out),
               "--no-progress"])
    assert rc == 0
    every = [json.loads(x) for x in (out / "labels" / "all_votes.jsonl").read_text().splitlines()]
    best = [json.loads(x) for x in (out / "labels" / "votes.jsonl").read_text().splitlines()]
    assert len(best) > 50 and len(every) > 2 * len(best)
    # one vote per rubric, for the side the mean over both orders prefers
    assert all(r["votes"] == ["a" if r["p_a"] > 0.5 else "b" if r["p_a"] < 0.5 else "tie"] for r in every)
    assert sum(r["votes"] == ["a"] for r in every) > 0.2 * len(every) and sum(r["votes"] == ["b"] for r in every) > 0.2 * len(every)
    res = json.loads((out / "eval" / "results.json").read_text())
    assert set(res["models"]) == {"reference", "dpo", "rloo"}
    assert all("gold_diff" in res["models"][m] for m in ("dpo", "rloo"))
    assert main(["demo", "--quick", "--annotator", "judge:", "--output-dir", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_next_token_logprobs_of_a_packed_batch_with_a_shared_prefix(causal_lm):
    """`score(model, batch, "next")`: at each sequence's last token, the next-token log-probs equal the model's own
    forward on that sequence alone (two sequences share a prefix copy, a third stands alone)."""
    from alignkit.data.collate import pack_responses
    from alignkit.models.logprobs import score

    model = causal_lm
    prefix, rows = [5, 9, 14, 3], [[7, 8], [11], [4, 4, 6]]
    batch = pack_responses([prefix, prefix, [2, 6]], rows, 0)
    with torch.no_grad():
        got = score(model, batch, "next").next
        for i, (p, r) in enumerate(zip([prefix, prefix, [2, 6]], rows, strict=True)):
            want = torch.log_softmax(model(torch.tensor([p + r])).logits[0, -1].float(), -1)
            assert torch.allclose(got[i], want, atol=1e-4), (i, (got[i] - want).abs().max())


def test_judged_win_rate_is_the_policys_side(monkeypatch, tmp_path):
    """`evaluate.judged.judge_policies` orients every verdict as P(policy better than the reference): with a judge
    that prefers the longer response and a policy that answers longer on two prompts of three, the win rate is
    the per-prompt mean of P(policy), computed here by hand from the judge's rule (both orders averaged)."""
    import alignkit.judges as judges
    from alignkit.evaluate.judged import judge_policies
    from alignkit.judges.config import JudgeSettings
    from alignkit.rollout.sample import PolicySamples

    monkeypatch.setattr(judges, "check_judge", lambda settings: [load_rubric("helpful")])
    monkeypatch.setattr(judges, "make_judge", lambda settings: _Fixed())
    prompts = ["p0", "p1", "p2"]
    ref = PolicySamples(prompts, [0, 1, 2], responses=["short", "short", "a much longer one"], lengths=[1, 1, 4])
    pol = PolicySamples(prompts, [0, 1, 2], responses=["a longer answer", "a longer answer", "tiny"], lengths=[3, 3, 1])
    out = judge_policies({"reference": ref, "policy": pol}, JudgeSettings(judge="x", judge_cache=str(tmp_path / "c")),
                         progress=False)
    entry = out["models"]["policy"]
    # longer first: p = 0.8, so P(policy) = 0.8 shown first and 1 - 0.4 = 0.6 shown second: 0.7; shorter: 0.3
    assert entry["verdicts"] == [pytest.approx(0.7), pytest.approx(0.7), pytest.approx(0.3)]
    assert entry["win_rate"] == pytest.approx((0.7 + 0.7 + 0.3) / 3)
    assert entry["consistency"] == 1.0
