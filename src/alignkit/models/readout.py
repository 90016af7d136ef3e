"""A backbone's final hidden states at a few positions only, without running its last decoder layer and final
norm on every position.

A reward model reads its backbone at each sequence's last token: of the last decoder layer only the keys and
values are needed at every position; its queries, attention output, residual, MLP and the final norm only at the
positions read. `hidden_at` runs the backbone up to its last decoder layer (a forward pre-hook records the inputs
the backbone gives that layer, the attention mask as the backbone prepared it and Llama's rotary cos/sin included,
and stops the forward there), then computes the last layer by hand at the positions read: the same math as the
full forward, float rounding aside. It calls the layer's own submodules (projections, norms, MLP), so peft's LoRA
adapters wrapped around them take part.

Supported: GPT-2 blocks and the Llama decoder layer (Llama; Mistral and Qwen2, whose layers are Llama's with a
sliding window, when the window is off), with sdpa or eager attention and no active dropout in the last layer.
Anything else (other architectures, FSDP or DeepSpeed wrappers, other attention implementations, sliding
windows, ...) takes the full backbone: the same result, with more work. `full_backbone()` forces that path.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
import torch.nn.functional as F

from alignkit.models.compat import off_device, untested
from alignkit.models.load import decoder_layers, sharded, unwrap
from alignkit.models.varlen import VARLEN, view_keys

ENABLED = True  # False: every read runs the full backbone (see `full_backbone`)


@contextlib.contextmanager
def full_backbone():
    """Within this block `hidden_at` runs the full backbone (the reference the fast path is checked against)."""
    global ENABLED
    old, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = old


def hidden_at(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor,
              index: torch.Tensor, **kwargs) -> torch.Tensor:
    """Final (normed) hidden states (N, H) of the backbone of `model` (peft-wrapped or not) at the flat positions
    `index` (N,) into (B * L). `attention_mask` is what the backbone takes: a 2D padding mask or a 4D mask; or
    None with the views of a flat packed row in `alignkit_views` (`models.varlen.flat_inputs`)."""
    base = unwrap(model)
    backbone = getattr(base, base.base_model_prefix)
    args = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                **kwargs)
    if not ENABLED or index.numel() == 0 or unsupported(model) is not None:
        return backbone(**args).last_hidden_state.flatten(0, 1)[index]
    layer = decoder_layers(backbone)[-1]
    inputs = _last_layer_inputs(backbone, layer, args)
    return _last_layer_at(backbone, layer, inputs, index)


def unsupported(model) -> str | None:
    """None when `hidden_at` computes the last layer of `model` at the read positions only, else why not."""
    if sharded(model):
        return "FSDP- or DeepSpeed-wrapped model"
    if (why := untested() or off_device(model)) is not None:
        return why
    base = unwrap(model)
    cfg = getattr(base, "config", None)
    backbone = getattr(base, getattr(base, "base_model_prefix", ""), None)
    if cfg is None or backbone is None:
        return "not a transformers model with a backbone"
    family = decoder_family(backbone)
    if family is None:
        return f"{type(backbone).__name__}: no hand-written last layer"
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    if impl not in ("sdpa", "eager", VARLEN):
        return f"attention implementation {impl!r}"
    layer = decoder_layers(backbone)[-1]
    attn = layer.attn if family == "gpt2" else layer.self_attn
    if getattr(cfg, "sliding_window", None) or getattr(attn, "sliding_window", None):
        return "sliding-window attention"
    if not getattr(cfg, "is_causal", True):
        return "not a causal model"
    if family == "gpt2" and (cfg.reorder_and_upcast_attn or attn.is_cross_attention or cfg.add_cross_attention
                             or not hasattr(attn, "scaling")):
        return "GPT-2 with upcast/reordered or cross attention"
    if layer.training and (getattr(attn, "attention_dropout", 0.0)
                           or any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in layer.modules())):
        return "dropout in the last layer while training"
    return None


def decoder_family(backbone) -> str | None:
    """"gpt2" or "llama" when the backbone and its last layer are exactly classes whose last layer is written
    below (subclasses may change the math: they are not taken)."""
    from transformers.models.gpt2 import modeling_gpt2 as gpt2
    from transformers.models.llama import modeling_llama as llama
    from transformers.models.mistral import modeling_mistral as mistral
    from transformers.models.qwen2 import modeling_qwen2 as qwen2

    layers = decoder_layers(backbone)
    if not layers:
        return None
    layer = layers[-1]
    if (type(backbone) is gpt2.GPT2Model and type(layer) is gpt2.GPT2Block
            and type(layer.attn) is gpt2.GPT2Attention):
        return "gpt2"
    for m, p in ((llama, "Llama"), (mistral, "Mistral"), (qwen2, "Qwen2")):
        if (type(backbone) is getattr(m, p + "Model") and type(layer) is getattr(m, p + "DecoderLayer")
                and type(layer.self_attn) is getattr(m, p + "Attention")
                and len(layers) == backbone.config.num_hidden_layers):
            return "llama"
    return None


class _Stop(Exception):
    """Raised by the pre-hook of the last layer to end the backbone's forward there."""


def _last_layer_inputs(backbone, layer, args: dict) -> dict:
    """The named arguments the backbone's forward gives its last layer (that layer does not run)."""
    seen = {}

    def stop(module, a, kw):
        seen.update(inspect.signature(module.forward).bind(*a, **kw).arguments)
        raise _Stop

    handle = layer.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        backbone(**args)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"{type(backbone).__name__} did not call its last layer")
    return seen


def _slots(row: torch.Tensor, rows: int) -> tuple[torch.Tensor, int]:
    """For reads in batch rows `row` (N,): each read's slot among the reads of its row, and the most reads of a row."""
    counts = torch.bincount(row, minlength=rows)
    order = torch.argsort(row, stable=True)
    first = counts.cumsum(0) - counts
    slot = torch.empty_like(row)
    slot[order] = torch.arange(row.shape[0], device=row.device) - first[row[order]]
    return slot, int(counts.max())


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _last_layer_at(backbone, layer, inputs: dict, index: torch.Tensor) -> torch.Tensor:
    gpt2 = hasattr(layer, "ln_1")
    x, mask = inputs["hidden_states"], inputs.get("attention_mask")
    final_norm = backbone.ln_f if gpt2 else backbone.norm
    b, n = x.shape[:2]
    if x.dim() != 3 or not (mask is None or (isinstance(mask, torch.Tensor) and mask.dim() == 4
                                             and tuple(mask.shape[-2:]) == (n, n))):
        # inputs not as expected: the real layer at every position, then read
        rest = {k: v for k, v in inputs.items() if k not in ("hidden_states", "kwargs")}
        return final_norm(layer(x, **rest, **inputs.get("kwargs", {}))).flatten(0, 1)[index]
    row, col = index // n, index % n
    norm1, norm2 = (layer.ln_1, layer.ln_2) if gpt2 else (layer.input_layernorm, layer.post_attention_layernorm)
    h = norm1(x)  # (B, L, H): keys and values need every position

    if gpt2:
        attn = layer.attn
        e, d, c = attn.embed_dim, attn.head_dim, attn.c_attn
        if type(c) is _conv1d():  # plain weights: keys and values everywhere, queries only where read
            kv = torch.addmm(c.bias[e:], h.reshape(-1, e), c.weight[:, e:]).view(b, n, 2 * e)
            q = torch.addmm(c.bias[:e], h[row, col], c.weight[:, :e])
        else:  # a wrapped projection (peft LoRA): its full output
            qkv = c(h)
            kv, q = qkv[..., e:], qkv[row, col, :e]
        k, v = (t.reshape(b, n, -1, d).transpose(1, 2) for t in kv.split(e, dim=-1))
        q = q.view(q.shape[0], -1, d)
        out_proj, scaling = attn.c_proj, attn.scaling
    else:
        attn = layer.self_attn
        d = attn.head_dim
        q = attn.q_proj(h[row, col]).view(index.shape[0], -1, d)  # (N, heads, d)
        k, v = (p(h).view(b, n, -1, d).transpose(1, 2) for p in (attn.k_proj, attn.v_proj))  # (B, kv heads, L, d)
        cos, sin = (t.expand(b, -1, -1) for t in inputs["position_embeddings"])  # (B, L, d)
        q = q * cos[row, col, None] + rotate_half(q) * sin[row, col, None]
        k = k * cos[:, None] + rotate_half(k) * sin[:, None]
        if attn.num_key_value_groups > 1:
            k, v = (t.repeat_interleave(attn.num_key_value_groups, dim=1) for t in (k, v))
        out_proj, scaling = attn.o_proj, attn.scaling

    views = inputs.get("kwargs", {}).get("alignkit_views")
    if views is not None:  # a flat packed row (b == 1): each read attends to its own view up to itself
        keys, seen = view_keys(views, col)
        # index_select: its backward (index_add) is far cheaper than advanced indexing's (index_put accumulate)
        kg, vg = (t[0].index_select(1, keys.flatten()).unflatten(1, keys.shape).transpose(0, 1)
                  for t in (k, v))  # (N, heads, L, d)
        o = F.scaled_dot_product_attention(q[:, :, None], kg, vg, attn_mask=seen[:, None, None], scale=scaling)
        o = o.reshape(index.shape[0], -1)
    else:
        o = _row_attention(q, k, v, mask, row, col, b, n, scaling)
    y = x[row, col] + out_proj(o)
    y = y + layer.mlp(norm2(y))
    return final_norm(y)


def _row_attention(q, k, v, mask, row, col, b: int, n: int, scaling: float) -> torch.Tensor:
    """Attention (N, heads * d) of the reads at (row, col) over their rows' keys and values (B, heads, L, d)."""
    # the reads of each row are its queries (padded to the row with the most reads; padding attends everywhere)
    slot, width = _slots(row, b)
    heads, d = q.shape[1], q.shape[-1]
    qp = q.new_zeros(b, width, heads, d).index_put((row, slot), q).transpose(1, 2)  # (B, heads, Q, d)
    if mask is None:  # sdpa with a plain causal mask
        rows_mask = (torch.arange(n, device=q.device) <= col[:, None])[:, None]  # (N, 1, L)
    else:
        rows_mask = mask.expand(b, -1, -1, -1)[row, :, col]  # (N, mask heads, L)
    if rows_mask.dtype != torch.bool:
        rows_mask = rows_mask.to(qp.dtype)  # additive (eager attention)
    fill = torch.ones if rows_mask.dtype == torch.bool else torch.zeros
    mp = fill(b, width, *rows_mask.shape[1:], dtype=rows_mask.dtype, device=q.device)
    mp = mp.index_put((row, slot), rows_mask).transpose(1, 2)  # (B, mask heads, Q, L)
    o = F.scaled_dot_product_attention(qp, k, v, attn_mask=mp, scale=scaling)
    return o.transpose(1, 2)[row, slot].reshape(row.shape[0], heads * d)


def _conv1d():
    from transformers.pytorch_utils import Conv1D

    return Conv1D
