"""A judge behind an OpenAI-compatible server (vLLM, llama.cpp's server, Ollama, TGI, `alignkit serve`, hosted
APIs), through the official `openai` client: one chat completion of one token per presentation, at temperature
0, with the top log-probs of that token. P(first better) = P(A) / (P(A) + P(B)) over the listed alternatives
(letters with or without spaces, any case); a server that lists no log-probs gives a hard verdict from the
answer's first letter. Requests run `concurrency` at a time; the client retries connection errors, timeouts,
429 and 5xx answers `retries` times with exponential backoff."""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

from alignkit.judges.verdicts import JudgeServerError, Verdict

TOP_LOGPROBS = 20  # the most the OpenAI API lists


def _letter(token: str) -> str | None:
    t = token.strip().upper()
    return t if t in ("A", "B") else None


def read_verdict(choice) -> Verdict:
    """The verdict in one chat-completion choice: from the first token's top log-probs when listed, else from the
    answer text's first letter; a non-answer names why."""
    content = getattr(getattr(choice, "message", None), "content", None)
    logprobs = getattr(choice, "logprobs", None)
    tokens = getattr(logprobs, "content", None) or []
    if tokens:
        alts = getattr(tokens[0], "top_logprobs", None) or [tokens[0]]
        mass = {"A": 0.0, "B": 0.0}
        for alt in alts:
            letter = _letter(getattr(alt, "token", "") or "")
            lp = getattr(alt, "logprob", None)
            if letter and isinstance(lp, int | float) and math.isfinite(lp):
                mass[letter] += math.exp(lp)
        if mass["A"] + mass["B"] > 0:
            return Verdict(mass["A"] / (mass["A"] + mass["B"]), mass["A"] + mass["B"])
    if isinstance(content, str):
        text = content.strip()
        letter = _letter(text[:1])
        if letter and not text[1:2].isalpha():  # "A", "B.", "A)": not "Absolutely" or "Both"
            return Verdict(1.0 if letter == "A" else 0.0, None)
        return Verdict(None, None, "not an answer: " + repr(content[:40]))
    return Verdict(None, None, "malformed answer: no message content")


class ServerJudge:
    def __init__(self, url: str, model: str, *, concurrency: int = 4, timeout: float = 60.0, retries: int = 3):
        import openai

        self.url, self.model_name, self.concurrency = url, model, concurrency
        self.client = openai.OpenAI(base_url=url, api_key=os.environ.get("OPENAI_API_KEY") or "none",
                                    timeout=timeout, max_retries=retries)
        self.timeout, self.retries = timeout, retries
        self.id = f"server:{model}"  # the served model, wherever it is served: a restarted server resumes the cache
        self.chunk = 8 * concurrency  # presentations between cache writes

    def _one(self, text: str) -> Verdict:
        import openai

        where = f"judge server {self.url} (model {self.model_name})"
        try:
            r = self.client.chat.completions.create(
                model=self.model_name, messages=[{"role": "user", "content": text}], max_tokens=1, temperature=0,
                logprobs=True, top_logprobs=TOP_LOGPROBS)
        except openai.APITimeoutError as e:
            raise JudgeServerError(f"{where} did not answer within {self.timeout:g} s ({self.retries + 1} tries)") from e
        except openai.APIConnectionError as e:
            raise JudgeServerError(f"cannot reach {where}: {e.__cause__ or e}") from e
        except openai.APIStatusError as e:
            raise JudgeServerError(f"{where} answered HTTP {e.status_code}: {_message(e)}") from e
        except (openai.APIError, ValueError) as e:  # an answer that is no chat completion at all (not even JSON)
            return Verdict(None, None, f"malformed answer: {type(e).__name__}")
        choices = getattr(r, "choices", None)
        if not choices:
            return Verdict(None, None, "malformed answer: no choices")
        return read_verdict(choices[0])

    def judge(self, texts: list[str]) -> list[Verdict]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, texts))


def _message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else err
        if msg:
            return str(msg)[:200]
    return (str(getattr(e, "message", "")) or type(e).__name__)[:200]
