"""One decoding step (one new token per row, after a prefill) of a known decoder family, written by hand on the
model's own modules, for the sampler's token-by-token loop.

A decode step of a small model is mostly overhead: a transformers forward builds its 4D attention mask, dispatches
through its generic attention and cache code, and runs SDPA, whose CPU kernel costs more than two plain matmuls for
one query against a few dozen keys. Here: the embeddings, then per layer the layer's own norms, projections and
MLP (so peft's LoRA layers wrapped around them take part), the new keys and values appended through the cache's
`update` (in place for `rollout.engine.ReservedLayer`), and attention of the one query as two matmuls against the
cached keys with an additive padding bias, grouped-query heads read without copying the keys. The same math as
the model's forward, float rounding aside (tests/test_decode.py).

Covered: the families of `models.readout` (GPT-2; Llama, Mistral and Qwen2 without a sliding window) with sdpa or
eager attention, in eval mode (no dropout), not FSDP/DeepSpeed-wrapped; anything else runs its own forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from alignkit.models.load import decoder_layers, unwrap
from alignkit.models.readout import decoder_family, rotate_half, unsupported


def decode_step(model, cache) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """A function `(tokens (B,), position_ids (B, 1), attention_mask (B, L)) -> logits (B, V)` that runs one
    decoding step of `model` (peft-wrapped or not) and appends its keys and values to `cache` (a transformers
    `Cache` holding the prefill; L counts the cached positions plus the new one, 0 = padding), or None when
    `model` is not covered (the caller then runs `model(...)`)."""
    base = unwrap(model)
    if base.training or unsupported(model) is not None or not hasattr(cache, "update"):
        return None
    backbone = getattr(base, base.base_model_prefix)
    layers = decoder_layers(backbone)
    head = base.get_output_embeddings()
    if head is None or len(getattr(cache, "layers", ())) != len(layers):
        return None
    gpt2 = decoder_family(backbone) == "gpt2"
    # each layer's parts as plain calls, resolved once (see `direct`)
    parts = []
    for layer in layers:
        if gpt2:
            attn = layer.attn
            qkv = direct(attn.c_attn)
            parts.append((direct(layer.ln_1), lambda h, qkv=qkv, e=attn.embed_dim: qkv(h).split(e, dim=-1),
                          direct(attn.c_proj), direct(layer.ln_2), mlp_call(layer.mlp), attn.head_dim, attn.scaling))
        else:
            attn = layer.self_attn
            q, k, v = (direct(p) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
            parts.append((direct(layer.input_layernorm), lambda h, q=q, k=k, v=v: (q(h), k(h), v(h)),
                          direct(attn.o_proj), direct(layer.post_attention_layernorm), mlp_call(layer.mlp),
                          attn.head_dim, attn.scaling))
    embed, final_norm, head = direct(backbone.wte if gpt2 else backbone.embed_tokens), direct(
        backbone.ln_f if gpt2 else backbone.norm), direct(head)
    positional = direct(backbone.wpe) if gpt2 else None

    def step(tokens: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        bias = torch.zeros(attention_mask.shape, dtype=torch.float32, device=tokens.device)
        bias = bias.masked_fill_(attention_mask == 0, float("-inf"))[:, None, None]  # (B, 1, 1, L)
        pos = position_ids.view(-1)
        x = embed(tokens)  # (B, E)
        if gpt2:
            x = x + positional(pos)
        else:
            cos, sin = backbone.rotary_emb(x[:, None], pos[:, None])  # (B, 1, d)
        b = x.shape[0]
        for i, (norm1, project, out_proj, norm2, mlp, d, scaling) in enumerate(parts):
            q, k, v = (t.view(b, -1, d) for t in project(norm1(x)))
            if not gpt2:
                q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            keys, values = cache.update(k[:, :, None], v[:, :, None], i)  # (B, kv heads, L, d)
            x = x + out_proj(attend(q, keys, values, bias, scaling))
            x = x + mlp(norm2(x))
        return head(final_norm(x))

    return step


def direct(module) -> Callable[[torch.Tensor], torch.Tensor]:
    """`module` as a plain function call when it is exactly a layer whose forward is one functional op (GPT-2's
    Conv1D on 2D inputs, Linear, LayerNorm, Embedding, tanh-GELU, SiLU): the same op without nn.Module's call
    machinery, whose per-call cost is a large share of a small model's decode step. Anything else (a LoRA-wrapped projection, an
    RMSNorm, ...) stays the module."""
    from transformers.activations import GELUTanh, SiLUActivation
    from transformers.pytorch_utils import Conv1D

    kind = type(module)
    if kind is Conv1D:
        return functools.partial(torch.addmm, module.bias, mat2=module.weight)
    if kind is torch.nn.Linear:
        return functools.partial(F.linear, weight=module.weight, bias=module.bias)
    if kind is torch.nn.LayerNorm:
        return functools.partial(F.layer_norm, normalized_shape=module.normalized_shape, weight=module.weight,
                                 bias=module.bias, eps=module.eps)
    if kind is torch.nn.Embedding and module.max_norm is None:
        return functools.partial(F.embedding, weight=module.weight)
    if kind is GELUTanh:
        return module.act
    if kind in (SiLUActivation, torch.nn.SiLU):
        return F.silu
    return module


def mlp_call(mlp) -> Callable[[torch.Tensor], torch.Tensor]:
    """The MLP of a GPT-2 block or a Llama-family layer as `direct` calls (dropout is off in eval mode); any other
    MLP class is called as it is."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP
    from transformers.models.llama.modeling_llama import LlamaMLP
    from transformers.models.mistral.modeling_mistral import MistralMLP
    from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP

    if type(mlp) is GPT2MLP:
        up, act, down = direct(mlp.c_fc), direct(mlp.act), direct(mlp.c_proj)
        return lambda x: down(act(up(x)))
    if type(mlp) in (LlamaMLP, MistralMLP, Qwen2MLP):
        gate, up, act, down = direct(mlp.gate_proj), direct(mlp.up_proj), direct(mlp.act_fn), direct(mlp.down_proj)
        return lambda x: down(act(gate(x)) * up(x))
    return mlp


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
           scaling: float) -> torch.Tensor:
    """Attention (B, heads * d) of one query per row, q (B, heads, d), over keys / values (B, kv heads, L, d) with
    an additive bias (B, 1, 1, L); query head j reads kv head j // (heads / kv heads), as transformers' repeat_kv."""
    b, heads, d = q.shape
    groups = heads // keys.shape[1]
    w = torch.matmul(q.reshape(b, keys.shape[1], groups, d), keys.transpose(-1, -2)).mul_(scaling)
    w = (w + bias).softmax(-1)  # (B, kv heads, groups, L)
    return torch.matmul(w.to(values.dtype), values).reshape(b, heads * d)
