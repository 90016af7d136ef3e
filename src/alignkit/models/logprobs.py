"""Per-sequence log-probabilities and reward-model scores from a forward pass.

Conventions (DESIGN.md): a response's log-probability is the SUM of its tokens' log-probabilities, prompt and
padding masked, computed in float32 whatever the model's dtype. Both left and right padding work: positions
are taken from the attention mask.

Memory and compute: the language-model head runs only on the positions that are scored (response tokens),
in chunks of `HEAD_CHUNK` positions under activation checkpointing, so no (batch, length, vocabulary) logits
tensor exists in the forward or the backward pass (the backward recomputes one chunk's logits at a time).
When the float32 logits of all scored positions would take at most `HEAD_KEEP_BYTES` (a small vocabulary or
batch) they are kept for the backward instead of recomputed.
Models whose head does more than a linear map (logit soft-capping or scaling) take the plain path.
Reward scores read the backbone at each sequence's last token only: its last layer runs in full only where
needed (`readout.hidden_at`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from alignkit.losses import token_entropy, token_logprobs
from alignkit.models.compat import untested
from alignkit.models.load import sharded, unwrap
from alignkit.models.readout import hidden_at
from alignkit.models.readout import unsupported as readout_unsupported
from alignkit.models.varlen import flat_inputs, varlen_hidden, varlen_supported

HEAD_CHUNK = 512  # scored positions per chunk of the LM head: 512 x 49k float32 logits = 100 MB for SmolLM2
# below this, the scored positions' logits are kept for the backward, not recomputed (trades memory for one LM-head
# matmul per chunk; docs/benchmarks.md has the SmolLM2 figures)
HEAD_KEEP_BYTES = 512 << 20


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens of each row (left padding shifts them), padding gets 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0).masked_fill(attention_mask == 0, 0)


def sequence_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_tokens: bool = False,
):
    """Summed log p(response | prompt) per row, shape (B,), float32.

    `response_mask[b, t] = 1` marks tokens that belong to the response (they are scored); the token at t is
    predicted by the logits at t-1. With `return_tokens=True` also returns per-token log-probs (B, L-1)
    aligned with input_ids[:, 1:] and zero outside the response."""
    # the predicting position must be a real token too: with left padding and an empty prompt the first
    # response token would otherwise be scored from a pad position's logits
    real = attention_mask.bool()
    mask = response_mask[:, 1:].bool() & real[:, 1:] & real[:, :-1]
    labels = input_ids[:, 1:].masked_fill(~mask, -100)
    if _needs_full_forward(model):
        out = model(input_ids=input_ids, attention_mask=attention_mask,
                    position_ids=position_ids_from_mask(attention_mask), use_cache=False)
        logits = out.logits[:, :-1]
        tok = token_logprobs(logits / temperature if temperature != 1.0 else logits, labels)
    else:
        hidden, head = _hidden_and_head(model, input_ids, attention_mask, lm=True)
        tok = head_logprobs(hidden[:, :-1], head, labels, temperature=temperature)
    seq = tok.sum(-1)
    return (seq, tok) if return_tokens else seq


def _needs_full_forward(model) -> bool:
    """True when the LM head is not a plain linear map of the last hidden state (soft-capping, scaling), or the
    model has no separable backbone: those go through the model's own forward."""
    if sharded(model):
        return True
    base = unwrap(model)
    cfg = getattr(base, "config", None)
    if cfg is None or not hasattr(base, "get_output_embeddings"):  # not a transformers model
        return True
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) is not None:
        return True
    return base.get_output_embeddings() is None or not hasattr(base, base.base_model_prefix)


def _chunk_logits(h: torch.Tensor, head, temperature: float) -> torch.Tensor:
    logits = head(h).float()
    return logits / temperature if temperature != 1.0 else logits


def _logprob_of(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.gather(-1, y[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _chunk_logprobs(h: torch.Tensor, y: torch.Tensor, head, temperature: float) -> torch.Tensor:
    return _logprob_of(_chunk_logits(h, head, temperature), y)


def head_logprobs(hidden: torch.Tensor, head, labels: torch.Tensor, *, temperature: float = 1.0,
                  entropy: bool = False, chunk: int | None = None):
    """`token_logprobs(head(hidden) / temperature, labels)` (B, L) computed only where `labels != -100`, a chunk
    of `chunk` (default `HEAD_CHUNK`) positions at a time (checkpointed when gradients flow, unless all their
    float32 logits fit in `HEAD_KEEP_BYTES`); with
    `entropy=True` also the per-token entropy (B, L, no gradient) of the same distributions, 0 at unscored
    positions."""
    chunk = chunk or HEAD_CHUNK
    scored = labels != -100
    where = scored.nonzero(as_tuple=True)
    flat = scored.flatten().nonzero().squeeze(1)  # the same positions: index_select backs up cheaply
    h, y = hidden.flatten(0, -2).index_select(0, flat), labels[where]
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    recompute = y.shape[0] * vocab * 4 > HEAD_KEEP_BYTES
    parts, ents = [], []
    for s in range(0, y.shape[0], chunk):
        hc, yc = h[s : s + chunk], y[s : s + chunk]
        if torch.is_grad_enabled() and hc.requires_grad:
            if recompute:
                parts.append(checkpoint(_chunk_logprobs, hc, yc, head, temperature, use_reentrant=False))
            else:
                parts.append(_chunk_logprobs(hc, yc, head, temperature))
            if entropy:
                with torch.no_grad():
                    ents.append(token_entropy(_chunk_logits(hc, head, temperature)))
        else:  # no gradient: one head pass serves both
            logits = _chunk_logits(hc, head, temperature)
            parts.append(_logprob_of(logits, yc))
            if entropy:
                ents.append(token_entropy(logits))
    zeros = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    logp = zeros.index_put(where, torch.cat(parts) if parts else zeros[where])
    if not entropy:
        return logp
    return logp, zeros.index_put(where, torch.cat(ents) if ents else zeros[where])


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token in each row, for left- or right-padded batches."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def _hidden_and_head(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, lm: bool = False):
    """Last hidden states of the model's backbone (peft-wrapped or not) and its head: the `score` head of a
    scalar-head model, or with `lm=True` the language-model head (output embeddings)."""
    base = unwrap(model)
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
    return hidden, base.get_output_embeddings() if lm else base.score


def reward_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar reward per row read at the last real token (not at the first pad: pad may equal EOS).

    `model` is an `AutoModelForSequenceClassification` with num_labels=1 (possibly peft-wrapped): the
    backbone's last hidden state goes through its `score` head. The backbone's last layer runs in full only
    where needed (`readout.hidden_at`)."""
    rows, length = input_ids.shape
    index = last_token_index(attention_mask) + torch.arange(rows, device=input_ids.device) * length
    last = hidden_at(model, input_ids, attention_mask, position_ids_from_mask(attention_mask), index)
    return unwrap(model).score(last).squeeze(-1).float()


@dataclass(frozen=True)
class Capabilities:
    """Which forwards compute `model` exactly (`capabilities`)."""

    packing: str | None  # why packed rows (under a 4D block mask) cannot be computed, or None when they can
    varlen: bool  # packed batches can run flat, attention per sequence (`models.varlen`)
    split_head: bool  # the LM head is a plain linear map, applied apart from the backbone at scored positions
    readout: str | None  # why the last layer cannot be read out at chosen positions only (`readout.hidden_at`)


def capabilities(model) -> Capabilities:
    """The one answer to "which fast path may this model take": asked of the model as it is now (its attention
    implementation and gradient checkpointing can change after loading). A model or transformers version the
    hand-written paths were not tested with gets the plain ones: its own forward on one sequence per row."""
    return Capabilities(packing=packing_supported(model), varlen=varlen_supported(model),
                        split_head=not _needs_full_forward(model), readout=readout_unsupported(model))


def packing_supported(model) -> str | None:
    """None when `model` computes packed batches (`data.collate.pack_units`) exactly, else the reason it cannot:
    the 4D mask needs the sdpa or eager attention, and a sliding window would be ignored under a custom mask."""
    cfg = getattr(unwrap(model), "config", None)
    if cfg is None:
        return "not a transformers model"
    if (why := untested()) is not None:
        return why
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    if impl not in ("sdpa", "eager"):
        return f"attention implementation {impl!r} takes no 4D mask"
    if getattr(cfg, "sliding_window", None):
        return "sliding-window attention"
    return None


def packed_attention_mask(segment: torch.Tensor, parent: torch.Tensor, eager: bool, dtype: torch.dtype) -> torch.Tensor:
    """(R, 1, L, L) mask of a packed batch: token q sees token k <= q of its own segment or of its parent
    segment; padding sees only itself (so no row of the softmax is empty). Boolean (True = attend) for sdpa,
    additive (0 / dtype min) for eager attention."""
    n = segment.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=segment.device).tril()
    k = segment[:, None, :]
    allowed = causal & (k >= 0) & ((k == segment[:, :, None]) | (k == parent[:, :, None]))
    allowed |= torch.eye(n, dtype=torch.bool, device=segment.device)
    if not eager:
        return allowed[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=segment.device).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def _packed_inputs(model, batch: dict) -> dict:
    """input_ids, attention mask and position_ids of a packed batch, as the model takes them: the 4D block mask,
    or for a batch of one sequence per row its 2D mask (which every attention implementation takes)."""
    if batch.get("one_per_row"):
        return dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"])
    eager = (getattr(unwrap(model).config, "_attn_implementation", None) or "eager") == "eager"
    mask = packed_attention_mask(batch["segment"], batch["parent"], eager, next(model.parameters()).dtype)
    return dict(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"])


def _use_varlen(caps: Capabilities, batch: dict) -> bool:
    """Whether a packed batch runs flat with attention per sequence (`models.varlen`) rather than in its rows."""
    return bool(batch.get("varlen")) and caps.varlen


def _packed_forward(model, batch: dict, caps: Capabilities):
    """Last hidden states (flattened to (R*L, H)) of a packed batch and the LM head to apply, or with a model that
    needs its own forward, its flattened logits and None."""
    if not caps.split_head:
        return model(**_packed_inputs(model, batch), use_cache=False).logits.flatten(0, 1), None
    return _packed_hidden(model, batch, caps), unwrap(model).get_output_embeddings()


def _packed_hidden(model, batch: dict, caps: Capabilities) -> torch.Tensor:
    """The backbone's last hidden states of a packed batch, (R*L, H): flat with attention per sequence
    (`models.varlen`) or in its rows under the block mask."""
    if _use_varlen(caps, batch):
        return varlen_hidden(model, batch)
    base = unwrap(model)
    hidden = getattr(base, base.base_model_prefix)(**_packed_inputs(model, batch), use_cache=False).last_hidden_state
    return hidden.flatten(0, 1)


def packed_sequence_logprobs(model, batch: dict, *, return_tokens: bool = False, temperature: float = 1.0):
    """`sequence_logprobs` of a packed batch: summed response log-probs per sequence (S,), and with
    `return_tokens=True` also the scored tokens' log-probs (N,) in `score_index` order."""
    s = score(model, batch, temperature=temperature)
    return (s.logp, s.tokens) if return_tokens else s.logp


@dataclass
class Scores:
    """What `score` read from a batch. Per sequence (S,), in the batch's sequence order; per scored token (N,), in
    `score_index` order. Fields not asked for are None."""

    logp: torch.Tensor | None = None  # (S,) summed log-probs of each sequence's scored tokens
    tokens: torch.Tensor | None = None  # (N,) log-prob of each scored token
    counts: torch.Tensor | None = None  # (S,) scored tokens per sequence
    entropy: torch.Tensor | None = None  # (N,) entropy of each scored token's distribution (no gradient)
    reward: torch.Tensor | None = None  # (S,) a scalar head read at each sequence's last token
    next: torch.Tensor | None = None  # (S, V) log-probs of the token after each sequence's last token
    values: torch.Tensor | None = None  # (N,) a scalar head read at the position predicting each scored token


def score(model, batch: dict, what: str = "logprobs", *, temperature: float = 1.0, entropy: bool = False) -> Scores:
    """The one scoring call for a training batch (`data.collate.pack_units` layout: packed, or one sequence per
    row). `what`:
    - "logprobs": log-probs of the scored tokens at `temperature`, their per-sequence sums and counts, and with
      `entropy=True` their entropies;
    - "reward": a scalar-head model's score at each sequence's last token;
    - "values": a scalar-head model's value at the positions that predict the scored tokens;
    - "next": a causal LM's log-probs (at `temperature`) of the token that would follow each sequence, read at its
      last token (a judge's answer), with the last layer and the LM head run at those positions only.
    The forward is picked from `capabilities(model)`: flat varlen, the rows under their mask, the last layer read
    out at the needed positions only, or the model's own forward."""
    caps = capabilities(model)
    if what == "reward":
        return Scores(reward=_reward_at_last(model, batch, caps))
    if what == "next":
        if caps.split_head:
            logits = unwrap(model).get_output_embeddings()(_hidden_at_last(model, batch, caps))
        else:
            logits = _packed_forward(model, batch, caps)[0].index_select(0, batch["last_index"])
        return Scores(next=torch.log_softmax(logits.float() / temperature, -1))
    if what == "values":
        hidden = _packed_hidden(model, batch, caps)
        return Scores(values=unwrap(model).score(hidden.index_select(0, batch["score_index"])).squeeze(-1).float())
    if what != "logprobs":
        raise ValueError(f"score: what={what!r}; choose logprobs, reward, values or next")
    counts = torch.bincount(batch["score_seq"], minlength=batch["last_index"].shape[0])
    out, head = _packed_forward(model, batch, caps)
    where, labels = batch["score_index"], batch["score_label"]
    scored = out.index_select(0, where)[None]  # index_select: a cheap backward (index_add, not index_put)
    ent = None
    if head is None:
        logits = scored / temperature if temperature != 1.0 else scored
        tok = token_logprobs(logits, labels[None])[0]
        if entropy:
            ent = token_entropy(logits.detach())[0]
    elif entropy:
        tok, ent = (t[0] for t in head_logprobs(scored, head, labels[None], temperature=temperature, entropy=True))
    else:
        tok = head_logprobs(scored, head, labels[None], temperature=temperature)[0]
    seq = torch.zeros(counts.shape[0], dtype=tok.dtype, device=tok.device).index_add(0, batch["score_seq"], tok)
    return Scores(logp=seq, tokens=tok, counts=counts, entropy=ent)


def packed_reward_scores(model, batch: dict) -> torch.Tensor:
    """`reward_scores` of a packed batch: the scalar head read at each sequence's last token, (S,)."""
    return score(model, batch, "reward").reward


def _hidden_at_last(model, batch: dict, caps: Capabilities) -> torch.Tensor:
    """The backbone's final hidden states (S, H) at each sequence's last token (`readout.hidden_at`)."""
    if _use_varlen(caps, batch):
        with flat_inputs(model, batch) as (args, keep):
            real = torch.full((batch["input_ids"].numel(),), -1, dtype=torch.long, device=keep.device)
            real[keep] = torch.arange(keep.shape[0], device=keep.device)
            return hidden_at(model, **args, index=real[batch["last_index"]])
    return hidden_at(model, **_packed_inputs(model, batch), index=batch["last_index"])


def _reward_at_last(model, batch: dict, caps: Capabilities) -> torch.Tensor:
    hidden = _hidden_at_last(model, batch, caps)
    head = unwrap(model).score
    # the head outside autocast: a bf16 scalar keeps 3 significant digits, too few to rank close responses
    with torch.autocast(hidden.device.type, enabled=False):
        return head(hidden.to(next(head.parameters()).dtype)).squeeze(-1).float()


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
                      response_mask: torch.Tensor, *, temperature: float = 1.0, entropy: bool = False):
    """Per-token log-probs (B, T) of the response columns `input_ids[:, prompt_width:]` at `temperature`,
    zero where `response_mask` is 0; with `entropy=True` also the per-token entropy (B, T) of the same
    distribution. Only the response positions' logits are kept."""
    labels = input_ids[:, prompt_width:].masked_fill(response_mask == 0, -100)
    if not _needs_full_forward(model):
        hidden, head = _hidden_and_head(model, input_ids, attention_mask, lm=True)
        return head_logprobs(hidden[:, prompt_width - 1 : -1], head, labels, temperature=temperature, entropy=entropy)
    keep = input_ids.shape[1] - prompt_width + 1  # the LM head runs on the response positions only
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False, logits_to_keep=keep)
    logits = out.logits[:, -keep:-1]
    if temperature != 1.0:
        logits = logits / temperature
    logp = token_logprobs(logits, labels)
    if not entropy:
        return logp
    return logp, token_entropy(logits.detach()) * response_mask


def response_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int) -> torch.Tensor:
    """Value estimates (B, T) for the response tokens from a scalar-head model: V_t is read at the position
    that predicts response token t (the state before the token is chosen)."""
    hidden, head = _hidden_and_head(model, input_ids, attention_mask)
    return head(hidden[:, prompt_width - 1 : -1]).squeeze(-1).float()
