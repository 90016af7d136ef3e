"""One decoding step (one new token per row, after a prefill) of a known decoder family, written by hand on the
model's own modules, for the sampler's token-by-token loop.

A decode step of a small model is mostly overhead: a transformers forward builds its 4D attention mask, dispatches
through its generic attention and cache code, and runs SDPA, whose CPU kernel costs ~110 us for one query against
50 keys where two matmuls take ~45 us. Here: the embeddings, then per layer the layer's own norms, projections and
MLP (so peft's LoRA layers wrapped around them take part), the new keys and values appended through the cache's
`update` (in place for `rollout.engine.ReservedLayer`), and attention of the one query as two matmuls against the
cached keys with an additive padding bias, grouped-query heads read without copying the keys. The same math as
the model's forward, float rounding aside (tests/test_decode.py).

Covered: the families of `models.readout` (GPT-2; Llama, Mistral and Qwen2 without a sliding window) with sdpa or
eager attention, in eval mode (no dropout), not FSDP/DeepSpeed-wrapped; anything else runs its own forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from alignkit.models.load import unwrap
from alignkit.models.readout import decoder_family, decoder_layers, rotate_half, unsupported


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

    def step(tokens: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        bias = torch.zeros(attention_mask.shape, dtype=torch.float32, device=tokens.device)
        bias = bias.masked_fill_(attention_mask == 0, float("-inf"))[:, None, None]  # (B, 1, 1, L)
        pos = position_ids.view(-1)
        if gpt2:
            x = backbone.wte(tokens) + backbone.wpe(pos)  # (B, E)
        else:
            x = backbone.embed_tokens(tokens)
            cos, sin = backbone.rotary_emb(x[:, None], pos[:, None])  # (B, 1, d)
        b = x.shape[0]
        for i, layer in enumerate(layers):
            if gpt2:
                attn = layer.attn
                h = layer.ln_1(x)
                q, k, v = (t.view(b, -1, attn.head_dim) for t in attn.c_attn(h).split(attn.embed_dim, dim=-1))
            else:
                attn = layer.self_attn
                h = layer.input_layernorm(x)
                q, k, v = (p(h).view(b, -1, attn.head_dim) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
                q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            keys, values = cache.update(k[:, :, None], v[:, :, None], i)  # (B, kv heads, L, d)
            o = attend(q, keys, values, bias, attn.scaling)
            x = x + (attn.c_proj if gpt2 else attn.o_proj)(o)
            x = x + layer.mlp((layer.ln_2 if gpt2 else layer.post_attention_layernorm)(x))
        return head((backbone.ln_f if gpt2 else backbone.norm)(x))

    return step


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
           scaling: float) -> torch.Tensor:
    """Attention (B, heads * d) of one query per row, q (B, heads, d), over keys / values (B, kv heads, L, d) with
    an additive bias (B, 1, 1, L); query head j reads kv head j // (heads / kv heads), as transformers' repeat_kv."""
    b, heads, d = q.shape
    groups = heads // keys.shape[1]
    w = torch.matmul(q.reshape(b, keys.shape[1], groups, d), keys.transpose(-1, -2)).mul_(scaling)
    w = (w + bias).softmax(-1)  # (B, kv heads, groups, L)
    return torch.matmul(w.to(values.dtype), values).reshape(b, heads * d)
