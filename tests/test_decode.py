"""The hand-written decode step (`models.decode.decode_step`) and the sampler's prefill of each distinct prompt once
(`HFBackend(prefill_once=True)`): the same logits, caches and samples as the model's own forward (float32, 1e-5),
really taken for the models they cover, and not taken for the others."""

from __future__ import annotations

import pytest
import torch

from alignkit.data.collate import pad_rows
from alignkit.models.compat import cache_keyword
from alignkit.models.decode import attend, decode_step, direct
from alignkit.models.load import apply_lora, fuse_activations
from alignkit.models.logprobs import position_ids_from_mask
from alignkit.rollout.engine import HFBackend, ReservedLayer, SamplingParams, reserved_cache

PAD, EOS = 0, 2
PROMPTS = [[5, 17, 30, 44, 51], [9, 13], [21, 22, 23, 24, 25, 26, 27, 28], [70]]


def build(arch: str, impl: str = "sdpa", seed: int = 0, **overrides):
    """A tiny randomly initialised causal LM, eval mode, float32."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    ids = dict(vocab_size=128, pad_token_id=PAD, bos_token_id=1, eos_token_id=EOS)
    # Llama family: grouped-query attention (4 query heads, 2 key/value heads)
    llama = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=128, **ids)
    config, cls = {
        "gpt2": (lambda: GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, **ids), GPT2LMHeadModel),
        "gpt2-unfused": (lambda: GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, **ids), GPT2LMHeadModel),
        "llama": (lambda: LlamaConfig(**llama), LlamaForCausalLM),
        "llama-bias": (lambda: LlamaConfig(attention_bias=True, mlp_bias=True, head_dim=8, **llama), LlamaForCausalLM),
        "mistral": (lambda: MistralConfig(sliding_window=None, **llama), MistralForCausalLM),
        "mistral-window": (lambda: MistralConfig(sliding_window=4, **llama), MistralForCausalLM),
        "qwen2": (lambda: Qwen2Config(**llama), Qwen2ForCausalLM),
        "neox": (lambda: GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, **ids), GPTNeoXForCausalLM),
    }[arch]
    config = config()
    for k, v in overrides.items():
        setattr(config, k, v)
    config._attn_implementation = impl
    model = cls(config).eval()
    if arch == "gpt2":
        fuse_activations(model)  # as `load_causal_lm` does: its GELU is one kernel (`direct` calls it)
    with torch.no_grad():  # GPT-2's biases start at zero: make them matter
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def prefill(model):
    """Two reserved caches holding the same left-padded prefill of PROMPTS, with its mask and next positions."""
    batch = pad_rows([(p, [0] * len(p)) for p in PROMPTS], PAD, side="left")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    pos = position_ids_from_mask(mask)
    caches = []
    with torch.no_grad():
        for _ in range(2):
            cache = reserved_cache(model, ids.shape[1] + 8)
            model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_keyword(model): cache})
            caches.append(cache)
    return caches, mask, pos[:, -1:] + 1


def compare_steps(model, steps: int = 5, cache_atol: float = 1e-5) -> float:
    """Largest |logit difference| between `decode_step` and the model's forward over `steps` decode steps with the
    same random tokens; row 1 stops attending to its new tokens after step 2 (a finished row in the live batch)."""
    (ref_cache, hand_cache), mask, pos = prefill(model)
    step = decode_step(model, hand_cache)
    assert step is not None
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    with torch.no_grad():
        for t in range(steps):
            tok = torch.randint(3, 128, (len(PROMPTS),), generator=gen)
            live = torch.ones(len(PROMPTS), 1, dtype=torch.long)
            live[1] = int(t < 2)
            mask = torch.cat([mask, live], dim=1)
            ref = model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, use_cache=True,
                        **{cache_keyword(model): ref_cache}).logits[:, -1]
            out = step(tok, pos, mask)
            worst = max(worst, (out - ref).abs().max().item())
            pos = pos + 1
    for a, b in zip(ref_cache.layers, hand_cache.layers, strict=True):  # the same keys and values were cached
        torch.testing.assert_close(a.keys, b.keys, rtol=0, atol=cache_atol)
        torch.testing.assert_close(a.values, b.values, rtol=0, atol=cache_atol)
    return worst


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["gpt2", "gpt2-unfused", "llama", "llama-bias", "mistral", "qwen2"])
def test_decode_step_equals_the_forward(arch, impl):
    assert compare_steps(build(arch, impl)) < 1e-5


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_decode_step_under_bf16_autocast(arch):
    """Under bf16 autocast (`--mixed-precision bf16`) the hand step runs in bf16 as the forward does: equal up to
    bf16 rounding of logits of size ~1 (its step is 2^-7)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compare_steps(build(arch), cache_atol=0.05) < 2e-2


def test_decode_step_runs_lora_adapters():
    model = build("llama")
    model = apply_lora(model, r=4, alpha=8, dropout=0.0, target="q_proj,v_proj,down_proj")
    with torch.no_grad():  # a fresh adapter is zero (lora_B = 0): make it change the output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.eval()
    assert compare_steps(model) < 1e-5
    with model.disable_adapter():
        assert compare_steps(model) < 1e-5
    # the adapter changes the logits, so a step that skipped it would have failed above
    (cache, _), mask, pos = prefill(model)
    tok, mask = torch.tensor([5, 6, 7, 8]), torch.cat([mask, torch.ones(4, 1, dtype=torch.long)], dim=1)
    with torch.no_grad():
        on = decode_step(model, cache)(tok, pos, mask)
        (cache, _), *_ = prefill(model)
        with model.disable_adapter():
            off = decode_step(model, cache)(tok, pos, mask)
    assert (on - off).abs().max() > 1e-2
    layer = model.get_base_model().model.layers[0]
    assert direct(layer.self_attn.q_proj) is layer.self_attn.q_proj  # the LoRA-wrapped projection: its module
    assert direct(layer.self_attn.k_proj) is not layer.self_attn.k_proj  # a plain Linear: F.linear


def test_direct_calls_equal_the_modules():
    from transformers.activations import GELUTanh, NewGELUActivation, SiLUActivation
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(6, 4)
    torch.nn.init.normal_(conv.bias)
    norm = torch.nn.LayerNorm(4)
    torch.nn.init.normal_(norm.weight), torch.nn.init.normal_(norm.bias)
    x = torch.randn(3, 4)
    for module, inp in ((conv, x), (torch.nn.Linear(4, 5), x), (norm, x), (torch.nn.Embedding(9, 4), torch.tensor([1, 8])),
                        (GELUTanh(), x), (SiLUActivation(), x), (torch.nn.SiLU(), x)):
        call = direct(module)
        assert call is not module
        torch.testing.assert_close(call(inp), module(inp), rtol=0, atol=1e-6)
    unfused = NewGELUActivation()
    assert direct(unfused) is unfused


@pytest.mark.parametrize("why", ["training", "sliding-window", "other-family", "not-a-cache"])
def test_decode_step_declines_what_it_does_not_cover(why):
    model = build({"sliding-window": "mistral-window", "other-family": "neox"}.get(why, "gpt2"))
    if why == "training":
        model.train()
    (cache, _), *_ = prefill(model)
    assert decode_step(model, None if why == "not-a-cache" else cache) is None


def test_attend_by_hand():
    """Grouped-query attention of one query, against softmax(q k / sqrt d) v written out per head."""
    gen = torch.Generator().manual_seed(0)
    q, keys, values = torch.randn(2, 4, 8, generator=gen), torch.randn(2, 2, 5, 8, generator=gen), torch.randn(
        2, 2, 5, 8, generator=gen)
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 0, 1]])
    bias = torch.zeros(2, 1, 1, 5).masked_fill(mask[:, None, None] == 0, float("-inf"))
    out = attend(q, keys, values, bias, 8 ** -0.5).view(2, 4, 8)
    for b in range(2):
        for h in range(4):
            kv = h // 2  # query heads 0, 1 read key/value head 0; heads 2, 3 head 1
            seen = mask[b].bool()
            w = torch.softmax(keys[b, kv, seen] @ q[b, h] / 8 ** 0.5, dim=0)
            torch.testing.assert_close(out[b, h], w @ values[b, kv, seen], rtol=0, atol=1e-6)


class Counting:
    """Wraps a model's forward to record the batch shape of every call made through `model(...)`."""

    def __init__(self, model):
        self.shapes, self.forward = [], model.forward
        model.forward = self

    def __call__(self, *args, **kwargs):
        self.shapes.append(tuple(kwargs["input_ids"].shape))
        return self.forward(*args, **kwargs)


def sample(model, prompts, *, greedy=False, eos=EOS, **backend):
    params = SamplingParams(max_new_tokens=10, temperature=0.9, greedy=greedy)
    return HFBackend(**backend).generate(model, prompts, params, pad_id=PAD, eos_id=eos,
                                         generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sampler_by_hand_and_prefill_once_give_the_forwards_samples(arch):
    """k = 3 samples of each prompt: the default sampler (hand decode, each distinct prompt prefilled once) gives the
    tokens, log-probs, entropies and masks of the plain one (model forward every step, every row prefilled), and
    really took its paths: one forward call, on the distinct prompts only."""
    model = build(arch)
    prompts = [p for p in PROMPTS for _ in range(3)]
    calls = Counting(model)
    for greedy in (False, True):
        calls.shapes.clear()
        plain = sample(model, prompts, greedy=greedy, decode_by_hand=False, prefill_once=False)
        # the prefill of every row, then one forward per further token (none after the last one)
        assert len(calls.shapes) == plain.response_mask.shape[1] and calls.shapes[0][0] == 12
        calls.shapes.clear()
        fast = sample(model, prompts, greedy=greedy)
        assert calls.shapes == [(len(PROMPTS), max(map(len, PROMPTS)))]
        assert torch.equal(fast.input_ids, plain.input_ids)
        assert torch.equal(fast.response_mask, plain.response_mask)
        torch.testing.assert_close(fast.logprobs, plain.logprobs, rtol=0, atol=1e-5)
        torch.testing.assert_close(fast.entropy, plain.entropy, rtol=0, atol=1e-5)
    # greedy: the k copies of a prompt agree; some rows reached EOS and were dropped, some ran on
    assert torch.equal(fast.input_ids[0::3], fast.input_ids[1::3])


def test_sampler_with_finished_rows_dropped_by_hand(monkeypatch):
    """With an end token that rows sample at different steps, the hand decode goes on over the compacted live batch
    (finished rows dropped) and gives the plain sampler's rollout."""
    model = build("gpt2")
    with torch.no_grad():
        model.lm_head.weight.mul_(3)  # peaked next-token distributions
    prompts = [p for p in PROMPTS for _ in range(4)]
    free = sample(model, prompts, eos=-1)  # no end token: take as one a token first sampled at many different steps
    firsts = {}
    for row in free.responses.tolist():
        for tok in set(row):
            firsts.setdefault(tok, set()).add(row.index(tok))
    eos = max(firsts, key=lambda tok: len(firsts[tok]))
    plain = sample(model, prompts, eos=eos, decode_by_hand=False, prefill_once=False)
    selects = []
    monkeypatch.setattr(ReservedLayer, "batch_select_indices",
                        lambda self, index, real=ReservedLayer.batch_select_indices: selects.append(len(index))
                        or real(self, index))
    fast = sample(model, prompts, eos=eos)
    layers = model.config.n_layer
    assert selects[:layers] == [len(prompts)] * layers  # the prefill copied to the samples, then live batches shrank
    assert len(selects) > layers and selects[-1] < len(prompts)
    assert 0 < int(plain.finished.sum()) < len(prompts) and len(set(plain.lengths.tolist())) > 2
    assert torch.equal(fast.input_ids, plain.input_ids) and torch.equal(fast.response_mask, plain.response_mask)
    torch.testing.assert_close(fast.logprobs, plain.logprobs, rtol=0, atol=1e-5)
