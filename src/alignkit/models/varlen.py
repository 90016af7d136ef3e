"""Padding-free forward of a packed batch: every real token once, attention computed per sequence.

A packed batch (`data.collate.pack_units`) lays sequences side by side in rows padded to a common width, and its
block-diagonal mask makes the attention of a row cost its full width squared. Here the real tokens of all rows
are taken out into ONE flat row, so the token-wise layers (embeddings, projections, MLP, norms) see no padding,
and attention runs on "views": one per sequence, made of its parent segment's tokens (the shared prompt) and its
own, gathered into a (views, heads, length, head_dim) batch and computed with causal `scaled_dot_product_attention`
(right padding only: a real query never sees a pad key). Each token's output is read from exactly one view (a
shared prompt from the view of its first response), so every token is computed once and sees what the block
mask lets it see. The attention runs through transformers' attention interface: the model's config names
`VARLEN` for the duration of the forward pass, and the views travel as a keyword argument to every layer.

Supported: GPT-2, Llama, Mistral and Qwen2 models (`MODEL_TYPES`) with sdpa or eager attention and no sliding
window, not under gradient checkpointing (its recomputation in the backward pass would run after the attention
was switched back); others take the block mask (`models.logprobs`)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from alignkit.models.compat import fast_paths, off_device
from alignkit.models.load import unwrap

VARLEN = "alignkit_varlen"
MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2")  # attention through the interface, kwargs passed down (tested)


def varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                     alignkit_views=None, **kwargs):
    """Attention of a flat packed row, (1, heads, T, d) in, (1, T, heads, d) out, per view (see module doc)."""
    if alignkit_views is None:
        raise RuntimeError(f"the {VARLEN} attention needs the views of its batch (models.varlen.varlen_hidden)")
    if kwargs.get("softcap") is not None:
        raise RuntimeError(f"the {VARLEN} attention has no logit soft-capping")
    buckets, own = alignkit_views
    heads, kv_heads, d = query.shape[1], key.shape[1], query.shape[-1]
    q, k, v = (x[0].transpose(0, 1).reshape(x.shape[2], -1) for x in (query, key, value))  # (T, heads * d)
    outs = []
    for index in buckets:  # (V, L): index_select, whose backward (index_add) is much faster than indexing's
        n, width = index.shape
        qv, kv, vv = (x.index_select(0, index.flatten()).view(n, width, h, d).transpose(1, 2)
                      for x, h in ((q, heads), (k, kv_heads), (v, kv_heads)))  # (V, h, L, d)
        out = F.scaled_dot_product_attention(qv, kv, vv, dropout_p=dropout, scale=scaling, is_causal=True,
                                             enable_gqa=kv_heads != heads)
        outs.append(out.transpose(1, 2).reshape(n * width, heads * d))
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return out.index_select(0, own).view(1, -1, heads, d), None


AttentionInterface.register(VARLEN, varlen_attention)


def varlen_supported(model) -> bool:
    """Whether `varlen_hidden` can run `model` (a transformers model of a tested family, sdpa or eager
    attention, no sliding window, not gradient-checkpointed)."""
    base = unwrap(model)
    cfg = getattr(base, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in MODEL_TYPES or not fast_paths() or off_device(model):
        return False
    if (getattr(cfg, "_attn_implementation", None) or "eager") not in ("sdpa", "eager"):
        return False
    checkpointed = getattr(base, "is_activation_checkpointing", None)  # transformers >= 5; before: is_gradient_...
    if checkpointed is None:
        checkpointed = getattr(base, "is_gradient_checkpointing", False)
    if getattr(cfg, "sliding_window", None) or checkpointed:
        return False
    prefix = getattr(base, "base_model_prefix", None)  # a wrapper that only looks like a transformers model: no
    return bool(prefix) and hasattr(base, prefix)


def packed_views(segment: torch.Tensor, parent: torch.Tensor):
    """From a packed batch's (R, W) `segment` / `parent` ids: `keep` (T,), the flat (row * W + column) positions of
    its real tokens; `buckets`, a list of (V, L) tensors, each row a view's tokens as positions in the flat
    real-token row (right-padded with 0), views of similar length in one bucket; `own` (T,), for each real token
    the place its output is read from in the concatenated (V * L) outputs of the buckets."""
    flat_seg = segment.flatten()
    keep = (flat_seg >= 0).nonzero().squeeze(1)
    seg, par = flat_seg[keep].tolist(), parent.flatten()[keep].tolist()
    spans: dict[int, list[int]] = {}  # segment -> [first token, end, parent]
    for t, (s, p) in enumerate(zip(seg, par, strict=True)):
        if s in spans:
            spans[s][1] = t + 1
        else:
            spans[s] = [t, t + 1, p]
    has_child = {p for s, (_, _, p) in spans.items() if p != s}
    views: list[tuple[list[int], int]] = []  # (tokens, how many leading tokens belong to another view)
    owned: set[int] = set()
    for s, (a, b, p) in spans.items():
        if p == s:
            if s not in has_child:
                views.append((list(range(a, b)), 0))
            continue
        pa, pb, pp = spans[p]
        if pp != p:
            raise ValueError("packed_views: a parent segment must be a root segment")
        views.append((list(range(pa, pb)) + list(range(a, b)), pb - pa if p in owned else 0))
        owned.add(p)
    # views of similar length share one attention call: a new bucket starts where a view would cost more than
    # twice its own length squared in the current one
    views.sort(key=lambda view: -len(view[0]))
    buckets: list[list[tuple[list[int], int]]] = []
    for view in views:
        if not buckets or 2 * len(view[0]) ** 2 < len(buckets[-1][0][0]) ** 2:
            buckets.append([])
        buckets[-1].append(view)
    own = torch.empty(len(seg), dtype=torch.long)
    indexes, base = [], 0
    for bucket in buckets:
        width = len(bucket[0][0])
        index = torch.zeros((len(bucket), width), dtype=torch.long)
        for v, (tokens, skip) in enumerate(bucket):
            index[v, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            start = base + v * width
            own[tokens[skip:]] = torch.arange(start + skip, start + len(tokens))
        indexes.append(index.to(segment.device))
        base += index.numel()
    return keep.to(segment.device), indexes, own.to(segment.device)


@contextmanager
def flat_inputs(model, batch: dict):
    """Within this block the attention of `model` is the varlen one; yields the backbone's inputs for the real
    tokens of packed `batch` in one flat row (input_ids, position_ids, the views; no attention mask) and `keep`,
    their flat (row * W + column) positions in the batch."""
    base = unwrap(model)
    keep, buckets, own = packed_views(batch["segment"], batch["parent"])
    args = dict(input_ids=batch["input_ids"].flatten()[keep][None], attention_mask=None,
                position_ids=batch["position_ids"].flatten()[keep][None], alignkit_views=(buckets, own))
    before = base.config._attn_implementation
    base.config._attn_implementation = VARLEN
    try:
        yield args, keep
    finally:
        base.config._attn_implementation = before


def varlen_hidden(model, batch: dict) -> torch.Tensor:
    """The backbone's last hidden states of a packed batch, (R * W, H) laid out like the batch (zero at padding),
    each real token computed once (see the module doc). `model` must pass `varlen_supported`."""
    base = unwrap(model)
    with flat_inputs(model, batch) as (args, keep):
        hidden = getattr(base, base.base_model_prefix)(**args, use_cache=False).last_hidden_state[0]
    return hidden.new_zeros(batch["input_ids"].numel(), hidden.shape[-1]).index_copy(0, keep, hidden)


def view_keys(views, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For flat real-token `positions` (N,): the tokens each one attends to, from its view, (N, L) right-padded
    with 0, and which of them it sees (N, L) bool (the view up to the position itself)."""
    buckets, own = views
    place = own[positions]
    width = max(index.shape[1] for index in buckets)
    keys = torch.zeros((positions.shape[0], width), dtype=torch.long, device=positions.device)
    seen = torch.zeros((positions.shape[0], width), dtype=torch.bool, device=positions.device)
    start = 0
    for index in buckets:
        n, w = index.shape
        inside = (place >= start) & (place < start + n * w)
        local = place[inside] - start
        keys[inside, :w] = index[local // w]
        seen[inside, :w] = torch.arange(w, device=positions.device) <= (local % w)[:, None]
        start += n * w
    return keys, seen
