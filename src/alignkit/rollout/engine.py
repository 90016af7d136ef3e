"""Batched sampling with a KV cache, returning tokens, masks and per-token log-probs.

Layout of a `Rollout`: prompts are LEFT-padded to a common width P, responses follow and are right-padded to
T, so response token t of every row sits at column P + t. A response stops at its first EOS (which is part
of the response and of `response_mask`); everything after it is padding. `logprobs[b, t]` is
log softmax(logits / temperature)[token], the distribution the token was drawn from before top-k / top-p
filtering (filtering only shapes sampling; training recomputes log-probs at the same temperature).

`Backend` is the interface a faster engine (e.g. vLLM on a GPU) implements to replace `HFBackend` without
touching the trainers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch

from alignkit.data.collate import pad_rows
from alignkit.models.logprobs import position_ids_from_mask


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    greedy: bool = False  # argmax instead of sampling (log-probs still at `temperature`)


@dataclass
class Rollout:
    input_ids: torch.Tensor  # (B, P + T)
    attention_mask: torch.Tensor  # (B, P + T)
    prompt_width: int  # P
    response_mask: torch.Tensor  # (B, T): 1 on generated tokens up to and including EOS
    logprobs: torch.Tensor  # (B, T), 0 where response_mask is 0
    finished: torch.Tensor  # (B,) bool: the response reached EOS
    seconds: float = 0.0

    @property
    def responses(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width:]

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def full_response_mask(self) -> torch.Tensor:
        """(B, P + T) mask of response tokens over the whole sequence."""
        zeros = torch.zeros_like(self.input_ids[:, : self.prompt_width])
        return torch.cat([zeros, self.response_mask.long()], dim=1)


def decode_responses(tokenizer, rollout: Rollout) -> list[str]:
    """The response texts of a rollout: tokens up to EOS, EOS and padding removed."""
    out = []
    for ids, mask in zip(rollout.responses.tolist(), rollout.response_mask.tolist(), strict=True):
        kept = [t for t, m in zip(ids, mask, strict=True) if m and t != tokenizer.eos_token_id]
        out.append(tokenizer.decode(kept, skip_special_tokens=True))
    return out


class Backend(Protocol):
    def generate(self, model, prompts: list[list[int]], params: SamplingParams, *, pad_id: int,
                 eos_id: int, generator: torch.Generator | None = None) -> Rollout: ...


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf (the most likely token always stays)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(-1) - probs  # mass strictly before each token
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False  # the most likely token stays even when top_p <= 0
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class HFBackend:
    """Sampling loop over any transformers causal LM, with its KV cache; sequences stop independently and the
    batch ends when every sequence has produced EOS (or max_new_tokens)."""

    @torch.no_grad()
    def generate(self, model, prompts: list[list[int]], params: SamplingParams, *, pad_id: int,
                 eos_id: int, generator: torch.Generator | None = None) -> Rollout:
        """Sample responses; `generator` (on the model's device) makes sampling independent of the global RNG."""
        start = time.perf_counter()
        device = next(model.parameters()).device
        batch = pad_rows([(p, [0] * len(p)) for p in prompts], pad_id, side="left")
        prompt_ids = batch["input_ids"].to(device)
        attention = batch["attention_mask"].to(device)
        n, width = prompt_ids.shape
        positions = position_ids_from_mask(attention)
        out = model(input_ids=prompt_ids, attention_mask=attention, position_ids=positions, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
        next_pos = positions[:, -1:] + 1
        done = torch.zeros(n, dtype=torch.bool, device=device)
        tokens, logps, masks = [], [], []
        temperature = params.temperature if params.temperature > 0 else 1.0
        for _ in range(params.max_new_tokens):
            scaled = logits.float() / temperature
            logp_all = torch.log_softmax(scaled, dim=-1)
            if params.greedy:
                tok = scaled.argmax(-1)
            else:
                probs = torch.softmax(filter_logits(scaled, params.top_k, params.top_p), dim=-1)
                tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            live = ~done
            tok = torch.where(live, tok, torch.full_like(tok, pad_id))
            tokens.append(tok)
            logps.append(torch.where(live, logp_all.gather(-1, tok.unsqueeze(-1)).squeeze(-1), 0.0))
            masks.append(live)
            done = done | (live & (tok == eos_id))
            if bool(done.all()):
                break
            attention = torch.cat([attention, live.long().unsqueeze(-1)], dim=1)
            out = model(input_ids=tok.unsqueeze(-1), attention_mask=attention, position_ids=next_pos,
                        past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1]
            next_pos = next_pos + 1
        responses = torch.stack(tokens, dim=1)
        response_mask = torch.stack(masks, dim=1).long()
        return Rollout(
            input_ids=torch.cat([prompt_ids, responses], dim=1),
            attention_mask=torch.cat([batch["attention_mask"].to(device), response_mask], dim=1),
            prompt_width=width,
            response_mask=response_mask,
            logprobs=torch.stack(logps, dim=1),
            finished=done,
            seconds=time.perf_counter() - start,
        )
