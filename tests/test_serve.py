"""`alignkit serve`: the OpenAI-compatible server, checked with the official `openai` client against the tiny
model's own log-probs, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import openai
import pytest

MESSAGES = [{"role": "system", "content": "You review films."}, {"role": "user", "content": "Review of Comet:"}]


def expected_greedy(path: str, steps: int, top: int):
    """By hand with transformers: the templated prompt, then per greedy step the float32 log-softmax of the
    next-token logits (top `top` values and ids) and the argmax token; stops after EOS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
            values, indices = torch.topk(logp, top)
            out.append((values.tolist(), indices.tolist()))
            ids.append(int(indices[0]))
            if ids[-1] == tok.eos_token_id:
                break
    return tok, prompt, out


def test_cli_serves_the_models_own_logprobs(tiny_model):
    proc = subprocess.Popen([sys.executable, "-m", "alignkit.cli.main", "serve", "--model", tiny_model, "--port", "0",
                             "--served-name", "tiny"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith(f"serving {tiny_model} as tiny at http://127.0.0.1:") and line.endswith("/v1"), line
        client = openai.OpenAI(base_url=line.split(" at ")[1], api_key="x", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=3,
                                               logprobs=True, top_logprobs=5)
        tok, prompt, steps = expected_greedy(tiny_model, 3, 5)
        choice = reply.choices[0]
        tokens = choice.logprobs.content
        stopped = steps[-1][1][0] == tok.eos_token_id
        assert len(tokens) == len(steps) - stopped
        for got, (values, ids) in zip(tokens, steps, strict=False):
            top = [t.logprob for t in got.top_logprobs]
            assert top == sorted(top, reverse=True)
            assert top == pytest.approx(values, abs=1e-4)
            assert [t.token for t in got.top_logprobs] == [tok.decode([i]) for i in ids]
            assert got.token == tok.decode([ids[0]]) and got.logprob == pytest.approx(values[0], abs=1e-4)
            assert bytes(got.bytes).decode("utf-8", errors="replace") == got.token
        assert choice.message.role == "assistant"
        assert choice.message.content == "".join(t.token for t in tokens)
        assert choice.finish_reason == ("stop" if stopped else "length")
        assert reply.model == "tiny" and reply.object == "chat.completion"
        assert reply.usage.prompt_tokens == len(prompt)
        assert reply.usage.completion_tokens == len(steps)
        assert reply.usage.total_tokens == len(prompt) + len(steps)
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def server(tiny_model):
    from alignkit.rollout.server import start_server

    srv, url = start_server(tiny_model, served_name="tiny", max_tokens_limit=64)
    yield srv, url
    srv.shutdown()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[1], api_key="x", max_retries=0, timeout=60)


def raw(url: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url + path, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_lists_the_served_name(server, client):
    assert [m.id for m in client.models.list()] == ["tiny"]
    status, body = raw(server[1], "/models")
    assert status == 200 and body["object"] == "list"
    assert body["data"][0] | {"created": 0} == {"id": "tiny", "object": "model", "owned_by": "alignkit", "created": 0}


@pytest.mark.parametrize("body, param", [
    (b'{"model": "tiny", "messages": [', None),
    (b'{"model": "tiny"}', "messages"),
    (b'{"messages": []}', "messages"),
    (b'{"messages": [{"role": "user", "content": 3}]}', "messages.[0].content"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 65}', "max_tokens"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', "temperature"),
])
def test_bad_requests_are_400(server, body, param):
    status, answer = raw(server[1], "/chat/completions", body)
    assert status == 400
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["param"] == param
    assert answer["error"]["message"] and "Traceback" not in answer["error"]["message"]


def test_client_errors(server, client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MESSAGES, logprobs=True, top_logprobs=50)
    assert e.value.status_code == 400 and e.value.body["param"] == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MESSAGES, n=2)
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert e.value.body["code"] == "model_not_found" and "tiny" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:  # longer than the tiny model's 1024 positions
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Delta " * 1200}])
    assert "this model's context is 1024 tokens" in e.value.body["message"]
    assert raw(server[1], "/completions", b"{}")[0] == 404


def test_seeded_sampling_and_length(client):
    ask = lambda seed: client.chat.completions.create(  # noqa: E731
        model="tiny", messages=MESSAGES, temperature=1.0, seed=seed, max_tokens=8).choices[0].message.content
    assert ask(7) == ask(7)
    assert ask(7) != ask(8)
    reply = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0,
                                           max_completion_tokens=2)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 2
    assert reply.choices[0].logprobs is None


def test_a_model_failure_is_a_500_and_the_server_goes_on(server, client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(server[0].engine.backend, "generate", broken)
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="tiny", messages=MESSAGES)
    assert e.value.status_code == 500 and "out of memory" in e.value.body["message"]
    monkeypatch.undo()
    assert client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2).choices[0].message


def test_a_missing_model_is_one_line_and_exit_2(tmp_path, capsys):
    from alignkit.cli.main import main

    assert main(["serve", "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alignkit serve: error: model ") and err.count("\n") == 1
