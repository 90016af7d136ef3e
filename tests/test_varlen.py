"""Padding-free attention per sequence (`models.varlen`): the views laid out by hand, and the flat forward against
the block-diagonal-mask forward of the same packed batch (float32, 1e-5), with a guard that it really ran."""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from alignkit.data.collate import pack_pairs, pack_units
from alignkit.losses import preference_loss
from alignkit.models.logprobs import packed_attention_mask, packed_sequence_logprobs
from alignkit.models.varlen import VARLEN, packed_views, varlen_hidden, varlen_supported
from test_packing import ITEMS, LAYOUTS, PAD  # prompts and responses of different lengths, one prompt empty


def test_packed_views_by_hand():
    # unit 0: prompt [1, 2] shared by responses [3, 4] and [5]; unit 1: [6, 7, 8]. Budget 0: one unit per row,
    # rows [1 2 3 4 5] and [6 7 8 pad pad]
    units = [[([1, 2], [0, 0], None, None), ([3, 4], [1, 1], 0, 0), ([5], [1], 0, 1)],
             [([6, 7, 8], [0, 1, 1], None, 2)]]
    b = pack_units(units, PAD, pack_tokens=0)
    keep, buckets, own = packed_views(b["segment"], b["parent"])
    assert keep.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]  # the pads of row 1 (flat 8, 9) are left out
    # views: prompt + first response (owns the prompt), prompt + second response, the lone sequence; lengths 4, 3, 3
    # share one bucket (3 * 3 * 2 >= 4 * 4), right-padded with token 0
    assert [x.tolist() for x in buckets] == [[[0, 1, 2, 3], [0, 1, 4, 0], [5, 6, 7, 0]]]
    # token 4 (the second response) is read at view 1, offset 2; tokens 5-7 at view 2, offsets 0-2
    assert own.tolist() == [0, 1, 2, 3, 4 + 2, 8, 9, 10]

    # a view more than sqrt(2) times shorter than the longest goes to a bucket of its own
    units = [[(list(range(1, 11)), [1] * 10, None, 0)], [([11, 12, 13], [1] * 3, None, 1)]]
    b = pack_units(units, PAD, pack_tokens=100)
    keep, buckets, own = packed_views(b["segment"], b["parent"])
    assert [x.shape for x in buckets] == [(1, 10), (1, 3)]
    assert own.tolist() == list(range(13))


def _model(arch: str, attn: str):
    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=256, resid_pdrop=0.0,
                                           embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2))
    else:  # grouped-query attention: 4 query heads share 2 key/value heads
        model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=256))
    model.config._attn_implementation = attn
    return model.eval()


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls of the varlen attention (so a silent fall-back to the masked path fails the test)."""
    seen = []
    inner = AttentionInterface._global_mapping[VARLEN]

    def counting(*args, **kwargs):
        seen.append(args[1].shape)
        return inner(*args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, VARLEN, counting)
    return seen


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_varlen_hidden_matches_block_mask(arch, attn, layout, calls):
    model = _model(arch, attn)
    assert varlen_supported(model)
    b = pack_pairs(ITEMS, PAD, **layout)
    mask = packed_attention_mask(b["segment"], b["parent"], attn == "eager", torch.float32)
    backbone = getattr(model, model.base_model_prefix)
    with torch.no_grad():
        want = backbone(input_ids=b["input_ids"], attention_mask=mask, position_ids=b["position_ids"],
                        use_cache=False).last_hidden_state.flatten(0, 1)
        got = varlen_hidden(model, b)
    real = b["attention_mask"].flatten().bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
    assert not got[~real].any()  # padding positions stay zero
    n_real = int(real.sum())
    assert calls == [torch.Size([1, 4, n_real, 16])] * 2  # both layers, on the real tokens only
    assert model.config._attn_implementation == attn  # switched back


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_varlen_logprobs_and_gradients_match_block_mask(arch, calls):
    model = _model(arch, "sdpa")
    results = []
    for varlen in (False, True):
        b = pack_pairs(ITEMS, PAD, pack_tokens=24, shared_prompt=True, varlen=varlen)
        model.zero_grad()
        logps, tok = packed_sequence_logprobs(model, b, return_tokens=True)
        n = len(ITEMS)
        preference_loss("dpo", logps[:n], logps[n:], torch.zeros(n), torch.zeros(n), beta=0.1).mean().backward()
        results.append((logps.detach(), tok.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
        assert len(calls) == (2 if varlen else 0)
    (lp0, tok0, g0), (lp1, tok1, g1) = results
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tok1, tok0, atol=1e-5, rtol=0)
    torch.testing.assert_close(g1, g0, atol=1e-5, rtol=1e-4)
    assert g0.abs().max() > 1e-3  # gradients flowed


def test_unsupported_models_take_the_masked_path(calls):
    model = _model("gpt2", "sdpa")
    model.gradient_checkpointing_enable()
    model.train()
    assert not varlen_supported(model)  # its recomputation would run after the attention was switched back
    b = pack_pairs(ITEMS, PAD, pack_tokens=0)
    packed_sequence_logprobs(model, b).sum().backward()
    model = _model("llama", "sdpa")
    model.config.sliding_window = 4
    assert not varlen_supported(model)
    model = _model("llama", "sdpa")
    model.config._attn_implementation = "flash_attention_2"
    assert not varlen_supported(model)
    assert calls == []
