"""The transformers-version gate (`models.compat`): outside the tested range every hand-written path is off, with
one warning line, and the plain path gives the same results; inside it, no deprecated keyword is passed."""

from __future__ import annotations

import inspect
import sys
import warnings

import pytest
import torch
from transformers.cache_utils import DynamicCache

from alignkit.models import compat
from alignkit.models.decode import decode_step
from alignkit.models.logprobs import packing_supported
from alignkit.models.readout import unsupported
from alignkit.models.varlen import varlen_supported
from alignkit.rollout.engine import reserved_cache
from test_decode import PROMPTS, Counting, build, sample

WARNING = "outside the range alignkit's fast paths were tested with"


def pretend(monkeypatch, version: str) -> None:
    # the module object now in sys.modules: transformers replaces its lazy module once submodules load
    monkeypatch.setattr(sys.modules["transformers"], "__version__", version)
    compat.fast_paths.cache_clear()
    compat._forward_keyword.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_gate():
    compat.fast_paths.cache_clear()
    compat._forward_keyword.cache_clear()
    yield
    compat.fast_paths.cache_clear()
    compat._forward_keyword.cache_clear()


def test_the_installed_transformers_is_inside_the_tested_range(capsys):
    assert compat.fast_paths()
    model = build("llama")
    assert unsupported(model) is None and varlen_supported(model) and packing_supported(model) is None
    assert WARNING not in capsys.readouterr().err


def test_outside_the_range_every_hand_written_path_is_off(monkeypatch, capsys):
    model = build("llama")
    pretend(monkeypatch, "99.0.0")
    assert "transformers 99.0.0 is outside the tested range" in unsupported(model)
    assert "outside the tested range" in packing_supported(model)
    assert not varlen_supported(model)
    assert reserved_cache(model, 32) is None
    assert decode_step(model, DynamicCache(config=model.config)) is None
    pretend(monkeypatch, "4.57.0")  # below the range too
    assert not varlen_supported(model)
    assert capsys.readouterr().err.count(WARNING) == 2  # once per version seen, not once per call


def test_outside_the_range_the_plain_sampler_gives_the_same_samples(monkeypatch):
    model = build("llama")
    prompts = [p for p in PROMPTS for _ in range(2)]
    fast = sample(model, prompts)
    pretend(monkeypatch, "99.0.0")
    calls = Counting(model)
    plain = sample(model, prompts)
    # the model's own forward: every row prefilled, then one call per further token
    assert calls.shapes[0][0] == len(prompts) and len(calls.shapes) == plain.response_mask.shape[1]
    assert torch.equal(plain.input_ids, fast.input_ids) and torch.equal(plain.response_mask, fast.response_mask)
    torch.testing.assert_close(plain.logprobs, fast.logprobs, rtol=0, atol=1e-5)


def test_the_cache_goes_under_the_keyword_the_model_takes(monkeypatch):
    model = build("gpt2")
    expected = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    assert compat.cache_keyword(model) == expected
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sample(model, PROMPTS, decode_by_hand=False)
    assert not [w for w in caught if "past_key_values" in str(w.message)]

    class Wrapper(torch.nn.Module):  # a forward that shows no keyword: the installed release's
        def forward(self, **kwargs):
            return kwargs

    for version, keyword in (("5.0.0", "past_key_values"), ("5.24.0", "cache"), ("5.30.1", "cache")):
        pretend(monkeypatch, version)
        assert compat.cache_keyword(Wrapper()) == keyword, version


def test_hand_written_paths_are_off_for_a_model_on_another_device():
    """On a GPU (here the meta device stands in for it) the libraries' own kernels run: no flat varlen forward, no
    last-layer read-out or hand-written decode step, no reserved KV cache; packed rows under the block mask stay."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignkit.models.logprobs import capabilities

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2)
    cpu = LlamaForCausalLM(config)
    assert capabilities(cpu).varlen and capabilities(cpu).readout is None and reserved_cache(cpu, 8) is not None
    with torch.device("meta"):
        meta = LlamaForCausalLM(config)
    caps = capabilities(meta)
    assert not caps.varlen and caps.readout == "on meta: the library's own kernels run there"
    assert caps.packing is None and reserved_cache(meta, 8) is None
