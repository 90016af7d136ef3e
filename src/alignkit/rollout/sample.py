"""Sampling a saved policy: K responses per prompt with their summed log-probs, batched and seeded per batch, through
the chosen backend (`rollout.backends`). `alignkit sample`, `alignkit eval` and the demo sample through here."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignkit.data.coh import coh_prompt
from alignkit.data.tokenize import Encoder
from alignkit.models.load import load_causal_lm
from alignkit.models.logprobs import capabilities, score
from alignkit.rollout.backends import make_backend
from alignkit.rollout.config import SampleSettings
from alignkit.rollout.engine import SamplingParams, decode_responses, generate_many, score_by_prompt


@dataclass
class PolicySamples:
    prompts: list  # one entry per sample
    prompt_index: list[int]
    responses: list[str] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)  # filled by `evaluate_policies` (0 for the reference)
    lengths: list[int] = field(default_factory=list)
    response_ids: list[list[int]] = field(default_factory=list)  # sampled tokens, EOS included
    logp: list[float] = field(default_factory=list)  # the policy's summed log-prob of each response


def prompt_suffix(path: str) -> str:
    """Text a policy expects after the prompt: a Chain of Hindsight model's positive feedback phrase."""
    coh = Path(path) / "alignkit_coh.json"
    return json.loads(coh.read_text())["positive"] if coh.exists() else ""


def prompt_encoder(tok, s: SampleSettings) -> Encoder:
    return Encoder(tok, max_length=s.max_prompt_length + s.max_new_tokens + 1, max_prompt_length=s.max_prompt_length,
                   chat_template=s.chat_template)


def sample_policy(path: str, tok, prompts: list, s: SampleSettings) -> PolicySamples:
    """Sample `s.samples` responses per prompt from the policy at `path`, with their summed log-probs at the
    sampling temperature. A Chain of Hindsight policy gets its positive phrase at the end of the prompt
    (`data.coh.coh_prompt`)."""
    policy = load_causal_lm(path).eval()
    suffix = prompt_suffix(path)
    enc = prompt_encoder(tok, s)
    expanded = [(i, p) for i, p in enumerate(prompts) for _ in range(s.samples)]
    out = PolicySamples([p for _, p in expanded], [i for i, _ in expanded])
    params = SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p)
    ids = [enc.truncate_prompt(enc.prompt_ids(coh_prompt(p, suffix) if suffix else p)) for _, p in expanded]
    backend = make_backend(s.backend, path, seed=s.seed)
    ro = generate_many(backend, policy, ids, params, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id,
                       batch_size=s.batch_size,
                       generator_for=lambda b: torch.Generator().manual_seed(s.seed * 1_000_003 + b))
    out.responses = decode_responses(tok, ro)
    out.lengths = ro.lengths.tolist()
    out.response_ids = [row[:n] for row, n in zip(ro.responses.tolist(), out.lengths, strict=True)]
    if backend.exact_logprobs:
        out.logp = (ro.logprobs * ro.response_mask).sum(-1).tolist()
    else:  # the policy's own log-probs of what the backend sampled
        out.logp = sequence_logps(policy, ids, out.response_ids, tok.pad_token_id, s.temperature)
    out.kl = [0.0] * len(expanded)
    return out


@torch.no_grad()
def sequence_logps(model, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int,
                   temperature: float) -> list[float]:
    """Summed log-probs of each response after its prompt under `model` (`models.score`): packed with each distinct
    prompt laid out once for all its responses where the model computes packed rows exactly, else one sequence
    per row (`rollout.engine.score_by_prompt`)."""
    return score_by_prompt(lambda b: score(model, b, temperature=temperature).logp, prompt_ids, response_ids, pad_id,
                           packed=capabilities(model).packing is None).tolist()
