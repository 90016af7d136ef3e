"""`alignkit chat`: talk to a trained policy through its chat template, optionally beside a second model."""

from __future__ import annotations

import sys

import torch

from alignkit.data.tokenize import Encoder
from alignkit.models.load import load_causal_lm, load_tokenizer
from alignkit.rollout.backends import make_backend
from alignkit.rollout.engine import SamplingParams, decode_responses


class ChatModel:
    def __init__(self, path: str, params: SamplingParams, backend: str = "hf"):
        self.tok = load_tokenizer(path)
        self.backend = make_backend(backend, path)
        self.model = load_causal_lm(path).eval()
        self.enc = Encoder(self.tok, max_length=4096, max_prompt_length=2048, chat_template=True)
        self.params = params
        self.history: list[dict] = []

    def reply(self, text: str, seed: int) -> str:
        self.history.append({"role": "user", "content": text})
        ids = self.enc.truncate_prompt(self.enc.prompt_ids(self.history))
        gen = torch.Generator().manual_seed(seed)
        ro = self.backend.generate(self.model, [ids], self.params, pad_id=self.tok.pad_token_id,
                                  eos_id=self.tok.eos_token_id, generator=gen)
        answer = decode_responses(self.tok, ro)[0].strip()
        self.history.append({"role": "assistant", "content": answer})
        return answer


def side_by_side(left: str, right: str, names: tuple[str, str], width: int = 60) -> str:
    import textwrap

    a = textwrap.wrap(left, width) or [""]
    b = textwrap.wrap(right, width) or [""]
    rows = [f"{names[0]:<{width}} | {names[1]}", "-" * (2 * width + 3)]
    for i in range(max(len(a), len(b))):
        rows.append(f"{a[i] if i < len(a) else '':<{width}} | {b[i] if i < len(b) else ''}")
    return "\n".join(rows)


def chat(cfg, stdin=None, out=None) -> int:
    """Talk to `cfg.model` (a `rollout.config.ChatConfig`), and to `cfg.compare` beside it."""
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, greedy=cfg.greedy)
    bots = [ChatModel(m, params, cfg.backend) for m in [cfg.model, *([cfg.compare] if cfg.compare else [])]]
    model, compare, seed = cfg.model, cfg.compare, cfg.seed
    interactive = stdin.isatty()
    if interactive:
        print("type a message; an empty line or Ctrl-D ends the chat", file=out)
    turn = 0
    while True:
        if interactive:
            print("> ", end="", file=out, flush=True)
        line = stdin.readline()
        if not line or not line.strip():
            return 0
        answers = [b.reply(line.strip(), seed + turn) for b in bots]
        turn += 1
        if compare:
            print(side_by_side(answers[0], answers[1], (model, compare)), file=out)
        else:
            print(answers[0], file=out)
        out.flush()
