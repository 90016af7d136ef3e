"""Sampling backends (`--backend hf|vllm`, `rollout.backends`): vLLM is refused with one clear line where it cannot
run, rollouts from token lists have the engine's layout, and a backend that gives no log-probs gets them from the
policy itself. The vLLM tests proper run only where vLLM and a CUDA GPU are present."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from alignkit.cli.main import main
from alignkit.rollout import backends
from alignkit.rollout.engine import HFBackend
from alignkit.rollout.vllm import rollout_from_tokens
from conftest import synthetic_pairs, write_jsonl

HAS_VLLM = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def _prompts(tmp_path) -> str:
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p["prompt"]} for p in synthetic_pairs(6, 0)])


@pytest.mark.skipif(HAS_VLLM, reason="vLLM and a GPU are here: nothing to refuse")
@pytest.mark.parametrize("installed", [False, True], ids=["no-vllm", "no-gpu"])
def test_vllm_backend_refused_with_one_line(tiny_model, tmp_path, capsys, monkeypatch, installed):
    """`--backend vllm` without vLLM, or without a GPU, exits 2 with one line naming what is missing, before any model
    is loaded; for sampling, evaluation, chat and RL alike."""
    if installed:  # vLLM importable, but no CUDA device
        real = importlib.util.find_spec
        monkeypatch.setattr(backends.importlib.util, "find_spec", lambda n: object() if n == "vllm" else real(n))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    prompts, out = _prompts(tmp_path), tmp_path / "out"
    commands = [
        ["sample", "--model", tiny_model, "--prompts", prompts, "--output", str(tmp_path / "s.jsonl")],
        ["eval", "--model", tiny_model, "--reference", tiny_model, "--prompts", prompts, "--gold", "vader",
         "--output-dir", str(out)],
        ["chat", "--model", tiny_model],
        ["rloo", "--model", tiny_model, "--prompts", prompts, "--reward", "vader", "--output-dir", str(out)],
    ]
    for args in commands:
        assert main([*args, "--backend", "vllm"]) == 2, args[0]
        err = capsys.readouterr().err.strip()
        want = "needs a CUDA GPU" if installed else 'needs vLLM, which is not installed: pip install "alignkit[vllm]"'
        assert want in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists() and not (tmp_path / "s.jsonl").exists()


def test_unknown_backend_refused():
    with pytest.raises(backends.ConfigError, match="unknown backend 'tgi'; choose from hf, vllm"):
        backends.check_backend("tgi")


def test_rollout_from_tokens_layout():
    """Prompts left-padded to a common width, responses right-padded after them, masks on the real tokens."""
    ro = rollout_from_tokens([[5, 6, 7], [8]], [[9, 2], [10, 11, 12]], [True, False], pad_id=0, device="cpu")
    assert ro.prompt_width == 3
    assert ro.input_ids.tolist() == [[5, 6, 7, 9, 2, 0], [0, 0, 8, 10, 11, 12]]
    assert ro.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert ro.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert ro.finished.tolist() == [True, False] and ro.entropy is None


class NoLogprobs(HFBackend):
    """The HF sampler posing as a backend that returns tokens only (as vLLM does here)."""

    exact_logprobs = False

    def generate(self, *args, **kwargs):
        ro = super().generate(*args, **kwargs)
        ro.logprobs = torch.zeros_like(ro.logprobs)
        ro.entropy = None
        return ro


def test_sample_policy_rescores_a_backend_without_logprobs(tiny_model, monkeypatch):
    """The same samples through a backend that gives no log-probs: their log-probs come from the policy, equal to
    the sampler's own up to float rounding."""
    from alignkit.models.load import load_tokenizer
    from alignkit.rollout import sample

    tok = load_tokenizer(tiny_model)
    s = sample.SampleSettings(max_new_tokens=8, samples=2, seed=3)
    prompts = [p["prompt"] for p in synthetic_pairs(5, 1)]
    want = sample.sample_policy(tiny_model, tok, prompts, s)
    monkeypatch.setattr(sample, "make_backend", lambda *a, **k: NoLogprobs())
    got = sample.sample_policy(tiny_model, tok, prompts, s)
    assert got.response_ids == want.response_ids
    assert min(abs(x) for x in want.logp) > 0.1
    assert got.logp == pytest.approx(want.logp, abs=1e-4)


@pytest.mark.skipif(not HAS_VLLM, reason="needs vLLM and a CUDA GPU")
def test_vllm_backend_samples_and_follows_the_policy(tiny_model):
    """vLLM samples rollouts in the engine's layout; after the policy's weights change, the engine holds the new
    ones when it next samples."""
    from alignkit.models.load import load_causal_lm, load_tokenizer
    from alignkit.rollout.engine import SamplingParams
    from alignkit.rollout.vllm import VLLMBackend

    tok = load_tokenizer(tiny_model)
    policy = load_causal_lm(tiny_model).cuda()
    backend = VLLMBackend(tiny_model, seed=0)
    prompts = [tok(p["prompt"])["input_ids"] for p in synthetic_pairs(4, 2)]
    params = SamplingParams(max_new_tokens=12)
    gen = torch.Generator(device="cuda").manual_seed(0)
    ro = backend.generate(policy, prompts, params, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, generator=gen)
    assert ro.input_ids.shape[0] == 4 and ro.response_mask.sum() > 4
    real = ro.attention_mask[:, ro.prompt_width :].bool()
    assert torch.equal(real, ro.response_mask.bool())
    runner = backend.llm.llm_engine.model_executor.driver_worker.worker.model_runner
    embed = policy.get_input_embeddings().weight
    with torch.no_grad():
        embed.add_(0.5 * torch.randn_like(embed))  # an update, as an optimizer step makes
    backend.generate(policy, prompts, params, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id, generator=gen)
    engine = dict(runner.model.named_parameters())["model.embed_tokens.weight"]
    torch.testing.assert_close(engine[: embed.shape[0]].float(), embed.float(), atol=1e-3, rtol=1e-3)
