"""An OpenAI-compatible HTTP server for one local causal LM (`alignkit serve`, `start_server`).

Endpoints: `GET /v1/models`, `GET /v1/models/{name}` and `POST /v1/chat/completions` (no streaming, n = 1), with
OpenAI's JSON schema and error objects, so the official `openai` client (or anything that speaks that API) can
chat with the model or use it as a judge.

- The messages go through the model's chat template (`data.tokenize.Encoder.prompt_ids`); the answer is sampled
  by the rollout engine (`rollout.backends.make_backend("hf")`), greedily when temperature is 0. A request
  with `seed` draws from its own generator, so the same request with the same seed gives the same answer.
- Log-probs are those of the model itself: the float32 log-softmax of its next-token logits (no temperature)
  at each answer position, from one forward over prompt + answer. They cover the answer's tokens, not the EOS
  that ended it; `usage.completion_tokens` counts that EOS too. A token's text is `tokenizer.decode([id])`
  and its bytes are the token's own bytes (for byte-level BPE tokenizers, also when the token is part of a
  multi-byte character).
- The model serves one request at a time (one lock); the HTTP side takes connections on threads.
- An answer never runs past the model's context: a prompt that leaves no room for one token is refused (400),
  a longer `max_tokens` than the room left ends the answer with finish_reason "length".
- Client errors are 400/404 with `{"error": {"message", "type", "param", "code"}}`; a failure inside the model
  is a 500 with a one-line message (the traceback goes to the server's stderr) and the server keeps serving.
"""

from __future__ import annotations

import json
import math
import secrets
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from alignkit.errors import AlignkitError, not_unicode
from alignkit.models.names import CONTEXT_KEYS

MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs
MAX_TEMPERATURE = 2.0  # OpenAI's bound on temperature
MAX_BODY_BYTES = 16 * 2**20
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class RequestError(Exception):
    """A request the server refuses: HTTP `status` and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    messages: list[dict]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    logprobs: bool
    top_logprobs: int


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _bad(param: str, message: str) -> RequestError:
    return RequestError(400, message, param)


def _content_text(content, where: str) -> str:
    """A message's content as text: a string, or a list of text parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                           and isinstance(p.get("text"), str) for p in content):
        text = "".join(p["text"] for p in content)
    else:
        raise _bad(where, f"'{where}' must be a string or a list of text parts")
    if problem := not_unicode(text):
        raise _bad(where, f"'{where}': {problem}")
    return text


def parse_messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _bad("messages", "'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(value):
        where = f"messages.[{i}]"
        if not isinstance(m, dict):
            raise _bad(where, f"'{where}' must be an object with 'role' and 'content'")
        role = m.get("role")
        if not isinstance(role, str):
            raise _bad(f"{where}.role", f"'{where}.role' must be a string")
        if role not in ROLES:
            raise _bad(f"{where}.role", f"'{where}.role' is {role!r}; alignkit serve takes "
                                         f"{', '.join(map(repr, ROLES))}")
        if "content" not in m or m["content"] is None:
            raise _bad(f"{where}.content", f"'{where}.content' is missing")
        out.append({"role": ROLES[role], "content": _content_text(m["content"], f"{where}.content")})
    return out


def parse_chat_request(body, served_name: str, max_tokens_limit: int) -> ChatRequest:
    """The settings of a chat-completion request body, or a `RequestError` naming the field at fault. A field
    given as null counts as not given."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    get = lambda key: body.get(key)  # noqa: E731 - null and absent alike
    model = get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model", "'model' must be a string")
    if model is not None and model != served_name:
        raise RequestError(404, f"The model '{model}' does not exist: this server serves '{served_name}'",
                           "model", code="model_not_found")
    if "messages" not in body:
        raise _bad("messages", "Missing required parameter: 'messages'")
    messages = parse_messages(body["messages"])
    if get("stream"):
        raise _bad("stream", "streaming is not supported by alignkit serve; leave 'stream' unset or false")
    if get("stop"):
        raise _bad("stop", "stop sequences are not supported by alignkit serve")
    key = "max_completion_tokens" if get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = get(key) if get(key) is not None else 16
    if not _is_int(max_tokens) or max_tokens < 1:
        raise _bad(key, f"'{key}' must be a positive integer, got {json.dumps(max_tokens)}")
    if max_tokens > max_tokens_limit:
        raise _bad(key, f"'{key}' is {max_tokens}, over this server's limit of {max_tokens_limit} "
                        "(alignkit serve --max-tokens-limit)")
    temperature = get("temperature") if get("temperature") is not None else 1.0
    if not _is_number(temperature) or not 0 <= temperature <= MAX_TEMPERATURE:
        raise _bad("temperature", f"'temperature' must be a number from 0 to {MAX_TEMPERATURE:g}, "
                                  f"got {json.dumps(temperature)}")
    top_p = get("top_p") if get("top_p") is not None else 1.0
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise _bad("top_p", f"'top_p' must be a number in (0, 1], got {json.dumps(top_p)}")
    seed = get("seed")
    if seed is not None and not _is_int(seed):
        raise _bad("seed", f"'seed' must be an integer, got {json.dumps(seed)}")
    n = get("n") if get("n") is not None else 1
    if not _is_int(n) or n < 1:
        raise _bad("n", f"'n' must be a positive integer, got {json.dumps(n)}")
    if n != 1:
        raise _bad("n", f"'n' is {n}; alignkit serve gives one choice per request (n = 1)")
    logprobs = get("logprobs") if get("logprobs") is not None else False
    if not isinstance(logprobs, bool):
        raise _bad("logprobs", f"'logprobs' must be a boolean, got {json.dumps(logprobs)}")
    top = get("top_logprobs")
    if top is not None:
        if not _is_int(top) or not 0 <= top <= MAX_TOP_LOGPROBS:
            raise _bad("top_logprobs", f"'top_logprobs' must be an integer from 0 to {MAX_TOP_LOGPROBS}, "
                                       f"got {json.dumps(top)}")
        if not logprobs:
            raise _bad("top_logprobs", "'logprobs' must be true when 'top_logprobs' is given")
    return ChatRequest(messages, max_tokens, float(temperature), float(top_p), seed, logprobs, top or 0)


def _byte_decoder(tok) -> dict[str, int] | None:
    """char -> byte of a byte-level BPE tokenizer's token alphabet, or None for another kind of tokenizer."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or type(backend.decoder).__name__ != "ByteLevel":
        return None
    try:
        from transformers.convert_slow_tokenizer import bytes_to_unicode
    except ImportError:
        return None
    return {c: b for b, c in bytes_to_unicode().items()}


class LoadedModel:
    """A causal LM, its tokenizer and chat template, answering chat requests one at a time."""

    def __init__(self, name: str):
        from alignkit.data.tokenize import Encoder
        from alignkit.models.load import load_causal_lm, load_tokenizer
        from alignkit.rollout.backends import make_backend

        self.name = name
        self.tok = load_tokenizer(name)
        if not getattr(self.tok, "chat_template", None):
            raise AlignkitError(f"the tokenizer of '{name}' has no chat template, so it cannot take chat messages")
        self.model = load_causal_lm(name).eval()
        self.backend = make_backend("hf", name)
        config = self.model.config
        found = [getattr(c, k, None) for c in (config, getattr(config, "text_config", None)) for k in CONTEXT_KEYS]
        self.context = next((v for v in found if _is_int(v) and v > 0), None)  # None: no limit declared
        longest = self.context or 2**31
        self.enc = Encoder(self.tok, max_length=longest + 1, max_prompt_length=longest, chat_template=True)
        self.lock = threading.Lock()
        self._bytes_of = _byte_decoder(self.tok)
        self._specials = set(self.tok.all_special_ids)

    def token_entry(self, token_id: int, logprob: float) -> dict:
        text = self.tok.decode([token_id])
        raw = None
        if self._bytes_of is not None and token_id not in self._specials:
            piece = self.tok.convert_ids_to_tokens(token_id)
            if isinstance(piece, str) and all(c in self._bytes_of for c in piece):
                raw = [self._bytes_of[c] for c in piece]
        return {"token": text, "logprob": logprob, "bytes": raw if raw is not None else list(text.encode("utf-8"))}

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        try:
            ids = self.enc.prompt_ids(messages)
        except Exception as e:  # noqa: BLE001 - a template may refuse any conversation it does not take
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise _bad("messages", f"the chat template of '{self.name}' does not take these messages: {first}") from e
        if self.context is not None and len(ids) >= self.context:
            raise _bad("messages", f"the messages are {len(ids)} tokens, and this model's context is {self.context} "
                                   "tokens, which leaves no room for an answer; shorten the messages")
        return ids

    def complete(self, req: ChatRequest, served_name: str) -> dict:
        import torch

        from alignkit.rollout.engine import SamplingParams, decode_responses

        ids = self.prompt_ids(req.messages)
        steps = req.max_tokens if self.context is None else min(req.max_tokens, self.context - len(ids))
        params = SamplingParams(max_new_tokens=steps, temperature=req.temperature or 1.0, top_p=req.top_p,
                                greedy=req.temperature == 0)
        seed = req.seed % 2**64 if req.seed is not None else secrets.randbits(63)
        with self.lock:
            ro = self.backend.generate(self.model, [ids], params, pad_id=self.tok.pad_token_id,
                                       eos_id=self.tok.eos_token_id, generator=torch.Generator().manual_seed(seed))
            generated = [t for t, m in zip(ro.responses[0].tolist(), ro.response_mask[0].tolist(), strict=True) if m]
            finished = bool(ro.finished[0])
            answer = generated[:-1] if finished else generated  # without the EOS that ended it
            logprobs = self._logprobs(ids, answer, req.top_logprobs) if req.logprobs else None
        text = decode_responses(self.tok, ro)[0]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                         "finish_reason": "stop" if finished else "length"}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(generated),
                      "total_tokens": len(ids) + len(generated)},
        }

    def _logprobs(self, prompt: list[int], answer: list[int], top: int) -> dict:
        import torch

        if not answer:
            return {"content": []}
        device = next(self.model.parameters()).device
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([prompt + answer], device=device)).logits[0]
            logp = torch.log_softmax(logits[len(prompt) - 1 : len(prompt) - 1 + len(answer)].float(), dim=-1)
            chosen = logp.gather(-1, torch.tensor(answer, device=device).unsqueeze(-1)).squeeze(-1).tolist()
            best = torch.topk(logp, top, dim=-1) if top else None
        content = []
        for i, (t, lp) in enumerate(zip(answer, chosen, strict=True)):
            alts = ([self.token_entry(a, v) for a, v in zip(best.indices[i].tolist(), best.values[i].tolist(),
                                                             strict=True)] if best is not None else [])
            content.append({**self.token_entry(t, lp), "top_logprobs": alts})
        return {"content": content}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries its Content-Length
    server_version = "alignkit-serve"
    server: ChatServer

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        if self.server.log_requests:
            super().log_message(format, *args)

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client went away
            self.close_connection = True

    def _error(self, err: RequestError) -> None:
        self._send(err.status, err.body())

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            self.close_connection = True
            raise RequestError(411, "send the request body with a Content-Length (chunked bodies are not taken)")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise RequestError(400, "the Content-Length header is not a non-negative integer")
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise RequestError(413, f"the request body is {length} bytes, over this server's limit of "
                                    f"{MAX_BODY_BYTES}")
        return self.rfile.read(length)

    def _path(self) -> str:
        return unquote(urlsplit(self.path).path).rstrip("/")

    def _not_found(self) -> None:
        self._error(RequestError(404, f"Invalid URL ({self.command} {urlsplit(self.path).path})"))

    def do_GET(self):  # noqa: N802 - BaseHTTPRequestHandler's naming
        path, name = self._path(), self.server.served_name
        if path == "/v1/models":
            self._send(200, {"object": "list", "data": [self.server.model_card()]})
        elif path.startswith("/v1/models/"):
            asked = path[len("/v1/models/"):]
            if asked == name:
                self._send(200, self.server.model_card())
            else:
                self._error(RequestError(404, f"The model '{asked}' does not exist: this server serves '{name}'",
                                         "model", code="model_not_found"))
        else:
            self._not_found()

    def do_POST(self):  # noqa: N802 - BaseHTTPRequestHandler's naming
        try:
            raw = self._read_body()
            if self._path() != "/v1/chat/completions":
                self._not_found()
                return
            try:
                body = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise RequestError(400, f"the request body is not valid JSON: {e}") from None
            req = parse_chat_request(body, self.server.served_name, self.server.max_tokens_limit)
            self._send(200, self.server.engine.complete(req, self.server.served_name))
        except RequestError as e:
            self._error(e)
        except Exception as e:  # noqa: BLE001 - a model failure must not take the server down
            traceback.print_exc(file=sys.stderr)
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            self._error(RequestError(500, f"the model failed on this request: {type(e).__name__}: {first}".rstrip(": "),
                                     kind="server_error"))

    def _unsupported(self):
        try:
            self._read_body()
        except RequestError as e:
            self._error(e)
            return
        self._not_found()

    do_PUT = do_PATCH = do_DELETE = _unsupported


class ChatServer(ThreadingHTTPServer):
    """The HTTP server; `engine` (a `LoadedModel`) answers its chat requests. `shutdown()` stops it and closes
    its socket."""

    daemon_threads = True

    def __init__(self, host: str, port: int, served_name: str, *, max_tokens_limit: int = 512,
                 log_requests: bool = True):
        if ":" in host:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), _Handler)
        except OSError as e:
            raise AlignkitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
        self.served_name = served_name
        self.max_tokens_limit = max_tokens_limit
        self.log_requests = log_requests
        self.engine: LoadedModel | None = None
        self.started = int(time.time())
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"

    def model_card(self) -> dict:
        return {"id": self.served_name, "object": "model", "created": self.started, "owned_by": "alignkit"}

    def shutdown(self) -> None:
        super().shutdown()
        self.server_close()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()


def start_server(model: str, host: str = "127.0.0.1", port: int = 0, served_name: str | None = None, *,
                 max_tokens_limit: int = 512, log_requests: bool = False) -> tuple[ChatServer, str]:
    """Serve `model` (a folder, hub id or built-in name) on a background thread; returns (server, base URL of
    its API, ".../v1"). Port 0 picks a free port. Stop it with `server.shutdown()`."""
    from alignkit.models.names import check_model

    check_model(model)
    engine = LoadedModel(model)
    server = ChatServer(host, port, served_name or model, max_tokens_limit=max_tokens_limit,
                        log_requests=log_requests)
    server.engine = engine
    server.thread = threading.Thread(target=server.serve_forever, name="alignkit-serve", daemon=True)
    server.thread.start()
    return server, server.url
