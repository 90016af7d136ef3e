"""Batched sampling with a KV cache, returning tokens, masks and per-token log-probs.

Layout of a `Rollout`: prompts are LEFT-padded to a common width P, responses follow and are right-padded to
T, so response token t of every row sits at column P + t. A response stops at its first EOS (which is part
of the response and of `response_mask`); everything after it is padding. `logprobs[b, t]` is
log softmax(logits / temperature)[token], the distribution the token was drawn from before top-k / top-p
filtering (filtering only shapes sampling; training recomputes log-probs at the same temperature).

`Backend` is the interface a faster engine implements to replace `HFBackend` without touching the trainers
(`rollout.backends`: `--backend hf|vllm`).

Speed: `HFBackend` keeps its KV cache in buffers reserved for the whole rollout (`reserved_cache`: appending a
token writes in place instead of copying the cache) and drops finished rows from its live batch (KV cache
included) so later decode steps only compute unfinished rows, prefills each distinct prompt once for all its
samples, and runs each decode step by hand for the models `models.decode` covers; `generate_many` samples a long list of prompts in batches of similar prompt length
(little left padding) and gives the rows back in their original order; `score_in_chunks` runs a scoring
forward (log-probs, values) over a rollout in row chunks of bounded padded size, each chunk's all-padding
columns cut off.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from alignkit.data.collate import pack_responses, pad_rows
from alignkit.losses import entropy_from_logprobs
from alignkit.models.compat import cache_keyword, fast_paths, off_device, output_cache
from alignkit.models.decode import decode_step
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
    entropy: torch.Tensor | None = None  # (B, T) entropy of the sampling distribution (before filtering), 0 off-mask

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
    eos = tokenizer.eos_token_id
    kept = [[t for t, m in zip(ids, mask, strict=True) if m and t != eos]
            for ids, mask in zip(rollout.responses.tolist(), rollout.response_mask.tolist(), strict=True)]
    return tokenizer.batch_decode(kept, skip_special_tokens=True)


class Backend(Protocol):
    """A sampling engine (`rollout.backends.make_backend`). `exact_logprobs`: the rollouts it returns carry the
    sampling log-probs and entropies of `model` itself; otherwise callers rescore the samples with `model`."""

    exact_logprobs: bool

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


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of `probs` (B, V), drawn with probability probs / row sum, by inverse CDF: one uniform
    number per row against the running sum. `torch.multinomial` draws an exponential number per vocabulary entry
    instead, which costs many times more per decode step, the more so the larger the vocabulary (SmolLM2: 49k).
    Entries of probability 0 are never drawn."""
    cdf = probs.float().cumsum(-1)
    total = cdf[:, -1:]
    # below the total even when rounding would lift u * total onto it, so the draw lands on a non-zero entry
    u = torch.minimum(torch.rand(probs.shape[0], 1, generator=generator, device=probs.device) * total,
                      torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


class ReservedLayer(DynamicLayer):
    """A full-attention KV-cache layer whose keys and values live in buffers with room for `capacity` positions:
    appending writes in place, where `DynamicLayer` copies the whole cache (`torch.cat`) at every token. It
    grows (doubling) if a sequence outlives the reservation; `keys` / `values` are views of the filled part."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.dtype, self.device = key_states.dtype, key_states.device
            room = max(self.capacity, key_states.shape[-2])
            self._k = key_states.new_empty(*key_states.shape[:2], room, key_states.shape[-1])
            self._v = value_states.new_empty(*value_states.shape[:2], room, value_states.shape[-1])
            self.is_initialized, self.length = True, 0
        end = self.length + key_states.shape[-2]
        if end > self._k.shape[-2]:
            self._k, self._v = (torch.cat([b, b.new_empty(*b.shape[:2], max(end, 2 * b.shape[-2]) - b.shape[-2],
                                                           b.shape[-1])], dim=-2) for b in (self._k, self._v))
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a ReservedLayer is only used by HFBackend, which never crops")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("a ReservedLayer is only used by HFBackend, which never repeats rows")


def reserved_cache(model, capacity: int) -> DynamicCache | None:
    """A `DynamicCache` for `model` whose full-attention layers are `ReservedLayer`s of `capacity` positions (other
    layer kinds, e.g. sliding windows, stay as transformers makes them); None when the model's config cannot
    describe its cache, or the model is on a GPU (`models.compat.off_device`): the model then makes its own."""
    config = getattr(model, "config", None)
    if config is None or not fast_paths() or off_device(model):
        return None
    try:
        cache = DynamicCache(config=config)
    except Exception:  # noqa: BLE001 - any config transformers cannot map: fall back to the model's own cache
        return None
    if not cache.layers:
        return None
    cache.layers = [ReservedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


DROP_FRACTION = 0.25  # compact the live batch once this share of its rows has finished
SCORE_TOKEN_BUDGET = 4096  # rows x padded width of one scoring forward in `score_in_chunks` (benchmarks/rollout.py)


class HFBackend:
    """Sampling loop over any transformers causal LM, with its KV cache; sequences stop independently and the
    batch ends when every sequence has produced EOS (or max_new_tokens).

    The prompt pass computes logits for the last prompt position only (`logits_to_keep=1`, which the model's
    forward must accept, as transformers causal LMs do). With `drop_finished`, once at least `drop_fraction`
    of the rows in the live batch have finished they are removed from it (their KV-cache rows, mask,
    positions and logits), so later steps compute only unfinished rows; the returned Rollout is laid out
    exactly as without it. Greedy decoding gives the same tokens either way. Sampling draws its noise for the
    rows of the live batch, so once rows were dropped the random stream (not the distribution) differs from a
    run without dropping. A cache without `batch_select_indices` (not a transformers `Cache`) is never
    compacted. With `reserve_cache` the KV cache is a `reserved_cache` sized for prompt + max_new_tokens; with it and
    `prefill_once`, repeated prompts (RLOO's k samples) are prefilled once and their cache rows copied. With
    `decode_by_hand`, decode steps run `models.decode.decode_step` where it covers the model (the model's forward
    otherwise). Both change the result by float rounding only."""

    exact_logprobs = True

    def __init__(self, drop_finished: bool = True, drop_fraction: float = DROP_FRACTION, reserve_cache: bool = True,
                 decode_by_hand: bool = True, prefill_once: bool = True):
        self.drop_finished = drop_finished
        self.drop_fraction = drop_fraction
        self.reserve_cache = reserve_cache
        self.decode_by_hand = decode_by_hand
        self.prefill_once = prefill_once

    @torch.no_grad()
    def generate(self, model, prompts: list[list[int]], params: SamplingParams, *, pad_id: int,
                 eos_id: int, generator: torch.Generator | None = None) -> Rollout:
        """Sample responses; `generator` (on the model's device) makes sampling independent of the global RNG."""
        start = time.perf_counter()
        device = next(model.parameters()).device
        steps = params.max_new_tokens
        longest = max((len(p) for p in prompts), default=0)
        cache = reserved_cache(model, longest + steps) if self.reserve_cache else None
        # prefill: with a reserved cache (it can copy rows), each distinct prompt once (RLOO samples k per
        # prompt) and its cache rows then copied to its samples; the LM head runs on the last prompt position
        # only (the one that predicts the first token)
        first: dict[tuple[int, ...], int] = {}
        copy_of = [first.setdefault(tuple(p), len(first)) for p in prompts]
        once = self.prefill_once and cache is not None and len(first) < len(prompts)
        batch = pad_rows([(list(p), [0] * len(p)) for p in (first if once else prompts)], pad_id, side="left")
        prompt_ids = batch["input_ids"].to(device)
        prompt_mask = batch["attention_mask"].to(device)
        width = prompt_ids.shape[1]
        positions = position_ids_from_mask(prompt_mask)
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1, **{cache_keyword(model): cache})
        past, logits = output_cache(out), out.logits[:, -1]
        if once:
            index = torch.tensor(copy_of, device=device)
            past.batch_select_indices(index)
            prompt_ids, prompt_mask, positions, logits = (t[index] for t in (prompt_ids, prompt_mask, positions, logits))
        n = prompt_ids.shape[0]
        step = decode_step(model, past) if self.decode_by_hand else None
        can_drop = self.drop_finished and hasattr(past, "batch_select_indices")
        # the live batch: `rows` maps each of its rows to its row of the output
        rows = torch.arange(n, device=device)
        attention, next_pos = prompt_mask, positions[:, -1:] + 1
        done = torch.zeros(n, dtype=torch.bool, device=device)
        tokens = torch.full((n, steps), pad_id, dtype=torch.long, device=device)
        logps = torch.zeros((n, steps), dtype=torch.float32, device=device)
        masks = torch.zeros((n, steps), dtype=torch.bool, device=device)
        ents = torch.zeros((n, steps), dtype=torch.float32, device=device)
        temperature = params.temperature if params.temperature > 0 else 1.0
        used = 0
        for t in range(steps):
            scaled = logits.float() / temperature
            logp_all = torch.log_softmax(scaled, dim=-1)
            if params.greedy:
                tok = scaled.argmax(-1)
            else:
                probs = torch.softmax(filter_logits(scaled, params.top_k, params.top_p), dim=-1)
                tok = sample_categorical(probs, generator)
            live = ~done
            tok = torch.where(live, tok, torch.full_like(tok, pad_id))
            tokens[rows, t] = tok
            logps[rows, t] = torch.where(live, logp_all.gather(-1, tok.unsqueeze(-1)).squeeze(-1), 0.0)
            masks[rows, t] = live
            ents[rows, t] = torch.where(live, entropy_from_logprobs(logp_all), 0.0)
            done = done | (live & (tok == eos_id))
            used = t + 1
            if used == steps or bool(done.all()):  # no forward for a token that will not be sampled
                break
            attention = torch.cat([attention, live.long().unsqueeze(-1)], dim=1)
            if can_drop and int(done.sum()) >= max(1.0, self.drop_fraction * len(done)):
                keep = (~done).nonzero().squeeze(-1)
                past.batch_select_indices(keep)
                rows, tok, attention, next_pos = rows[keep], tok[keep], attention[keep], next_pos[keep]
                done = done[keep]
            if step is not None:
                logits = step(tok, next_pos, attention)
            else:
                out = model(input_ids=tok.unsqueeze(-1), attention_mask=attention, position_ids=next_pos,
                            use_cache=True, **{cache_keyword(model): past})
                past, logits = output_cache(out), out.logits[:, -1]
            next_pos = next_pos + 1
        responses, logps, masks, ents = tokens[:, :used], logps[:, :used], masks[:, :used], ents[:, :used]
        response_mask = masks.long()
        return Rollout(
            input_ids=torch.cat([prompt_ids, responses], dim=1),
            attention_mask=torch.cat([prompt_mask, response_mask], dim=1),
            prompt_width=width,
            response_mask=response_mask,
            logprobs=logps,
            finished=(masks & (responses == eos_id)).any(-1),
            seconds=time.perf_counter() - start,
            entropy=ents,
        )


def merge_rollouts(parts: list[tuple[list[int], Rollout]], n: int, pad_id: int) -> Rollout:
    """One Rollout of `n` rows from parts `(rows, rollout)`: row i of a part's rollout becomes row `rows[i]`.
    Prompts are left-padded and responses right-padded to the widest part; `seconds` is the parts' sum."""
    width = max(ro.prompt_width for _, ro in parts)
    steps = max(ro.response_mask.shape[1] for _, ro in parts)
    like = parts[0][1]
    input_ids = torch.full((n, width + steps), pad_id, dtype=like.input_ids.dtype, device=like.input_ids.device)
    attention = torch.zeros_like(input_ids, dtype=like.attention_mask.dtype)
    response_mask = torch.zeros((n, steps), dtype=like.response_mask.dtype, device=input_ids.device)
    logprobs = torch.zeros((n, steps), dtype=like.logprobs.dtype, device=input_ids.device)
    finished = torch.zeros(n, dtype=torch.bool, device=input_ids.device)
    entropy = torch.zeros_like(logprobs) if all(ro.entropy is not None for _, ro in parts) else None
    for rows, ro in parts:
        idx = torch.tensor(rows, dtype=torch.long, device=input_ids.device)
        p, t = ro.prompt_width, ro.response_mask.shape[1]
        cols = torch.arange(width - p, width + t, device=input_ids.device)
        input_ids[idx[:, None], cols] = ro.input_ids
        attention[idx[:, None], cols] = ro.attention_mask
        response_mask[idx, :t] = ro.response_mask
        logprobs[idx, :t] = ro.logprobs
        finished[idx] = ro.finished
        if entropy is not None:
            entropy[idx, :t] = ro.entropy
    return Rollout(input_ids, attention, width, response_mask, logprobs, finished,
                   seconds=sum(ro.seconds for _, ro in parts), entropy=entropy)


def generate_many(backend: Backend, model, prompts: list[list[int]], params: SamplingParams, *, pad_id: int,
                  eos_id: int, batch_size: int, bucket: bool = True,
                  generator_for: Callable[[int], torch.Generator | None] | None = None) -> Rollout:
    """Sample every prompt in batches of `batch_size` and return ONE Rollout whose row i answers `prompts[i]`.

    With `bucket`, prompts are sorted by length (stable) before batching, so each batch holds prompts of
    similar length and little left padding; the rows are put back in the original order. Batch b samples with
    `generator_for(b)` (None: the global RNG), so a caller that seeds per batch stays reproducible."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i])) if bucket else list(range(len(prompts)))
    parts = []
    for b, s in enumerate(range(0, len(order), batch_size)):
        rows = order[s : s + batch_size]
        gen = generator_for(b) if generator_for is not None else None
        parts.append((rows, backend.generate(model, [prompts[i] for i in rows], params, pad_id=pad_id,
                                             eos_id=eos_id, generator=gen)))
    return merge_rollouts(parts, len(prompts), pad_id)


def budget_chunks(prompt_lengths: torch.Tensor, response_lengths: torch.Tensor, max_tokens: int) -> list[torch.Tensor]:
    """Row-index groups covering every row once: rows sorted by total length, each group as many rows as keep
    rows x (longest prompt + longest response of the group) within `max_tokens` (at least one row)."""
    order = (prompt_lengths + response_lengths).argsort(stable=True).tolist()
    p, r = prompt_lengths.tolist(), response_lengths.tolist()
    chunks, cur, cur_p, cur_r = [], [], 0, 0
    for i in order:
        if cur and (len(cur) + 1) * (max(cur_p, p[i]) + max(cur_r, r[i])) > max_tokens:
            chunks.append(cur)
            cur, cur_p, cur_r = [], 0, 0
        cur.append(i)
        cur_p, cur_r = max(cur_p, p[i]), max(cur_r, r[i])
    if cur:
        chunks.append(cur)
    return [torch.tensor(c, dtype=torch.long) for c in chunks]


def score_by_prompt(fn, prompts: list[list[int]], responses: list[list[int]], pad_id: int, *,
                    max_tokens: int = SCORE_TOKEN_BUDGET, varlen: bool = True, packed: bool = True,
                    rows: int = 16) -> torch.Tensor:
    """One value per row from `fn(batch)` -> (S,) over packed batches (`data.collate.pack_responses`: rows with
    the same prompt share one copy of it), in chunks of whole prompt groups of at most `max_tokens` real
    tokens (a larger group alone); with `packed=False` (a model that takes no packed rows), over batches of
    `rows` sequences, one per row. Returns (N,) float32 on the CPU in row order."""
    if not packed:
        parts = [fn(pack_responses(prompts[i : i + rows], responses[i : i + rows], pad_id, one_per_row=True))
                 for i in range(0, len(prompts), rows)]
        return torch.cat([t.detach().float().cpu() for t in parts]) if parts else torch.zeros(0)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(tuple(p), []).append(i)
    out = torch.zeros(len(prompts), dtype=torch.float32)
    chunk: list[int] = []
    size = 0
    for p, rows in [*groups.items(), ((), [])]:  # the empty sentinel flushes the last chunk
        n = len(p) + sum(len(responses[i]) for i in rows)
        if chunk and (not rows or size + n > max_tokens):
            batch = pack_responses([prompts[i] for i in chunk], [responses[i] for i in chunk], pad_id, varlen=varlen)
            out[chunk] = fn(batch).detach().float().cpu()
            chunk, size = [], 0
        chunk += rows
        size += n
    return out


def score_in_chunks(fn, rollout: Rollout, max_tokens: int = SCORE_TOKEN_BUDGET):
    """`fn(input_ids, attention_mask, prompt_width, response_mask)` -> (rows, T) tensor (or a tuple of them)
    evaluated over `rollout` in row chunks of at most `max_tokens` padded tokens (`budget_chunks`), each chunk
    cut to its own widest prompt and response; the results are put back as (B, T) tensors, zero past a
    chunk's width. For `fn` whose rows do not interact (log-probs, values), this equals one call on the whole
    rollout on every response token up to float rounding (padding positions may differ: zero here), with a
    peak memory bounded by the budget instead of the batch, and less padding computed."""
    width = rollout.prompt_width
    prompt_lengths = rollout.attention_mask[:, :width].sum(-1).clamp(min=1).cpu()  # keep >= 1 prompt column
    response_lengths = rollout.response_mask.sum(-1).cpu()
    outs = None
    for idx in budget_chunks(prompt_lengths, response_lengths, max_tokens):
        lo = width - int(prompt_lengths[idx].max())
        steps = max(int(response_lengths[idx].max()), 1)
        dev = idx.to(rollout.input_ids.device)
        res = fn(rollout.input_ids[dev, lo : width + steps], rollout.attention_mask[dev, lo : width + steps],
                 width - lo, rollout.response_mask[dev, :steps])
        single = not isinstance(res, tuple)
        res = (res,) if single else res
        if outs is None:
            outs = [torch.zeros((len(rollout.input_ids), rollout.response_mask.shape[1]), dtype=x.dtype,
                                device=x.device) for x in res]
        for o, x in zip(outs, res, strict=True):
            o[dev.to(o.device), :steps] = x
    return outs[0] if single else tuple(outs)
