"""What PPO and RLOO share: prompt loading, the reference, sampling + scoring a batch, and evaluation.

The per-method parts (advantages and losses) are in `ppo.py` and `rloo.py`."""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import torch
from accelerate.utils import send_to_device

from alignkit.console import say
from alignkit.data.collate import pack_responses
from alignkit.errors import AlignkitError
from alignkit.losses import kl_k1, kl_k3, masked_mean
from alignkit.models.logprobs import packed_sequence_logprobs, response_logprobs
from alignkit.models.varlen import varlen_supported
from alignkit.rollout.engine import (
    HFBackend,
    Rollout,
    SamplingParams,
    decode_responses,
    score_in_chunks,
)
from alignkit.rollout.rewards import CallableReward, reward_source
from alignkit.train.common import make_encoder, policy_and_tokenizer
from alignkit.train.config import RLConfig
from alignkit.train.inputs import load_inputs


def pack_rollout(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
                 response_mask: torch.Tensor, pad_id: int) -> dict | None:
    """Rollout rows (left-padded prompts, right-padded responses) packed padding-free with each distinct prompt laid
    out once (`data.collate.pack_responses`), on the rollout's device; None when a row has an empty prompt or
    response (left to the padded path)."""
    lengths = response_mask.sum(-1).tolist()
    prompt_mask = attention_mask[:, :prompt_width].bool()
    prompts = [ids[m].tolist() for ids, m in zip(input_ids[:, :prompt_width].cpu(), prompt_mask.cpu(), strict=True)]
    if not all(prompts) or not all(lengths):
        return None
    responses = [row[:n] for row, n in zip(input_ids[:, prompt_width:].tolist(), lengths, strict=True)]
    return send_to_device(pack_responses(prompts, responses, pad_id), input_ids.device)


def packs_rollouts(cfg: RLConfig, *models) -> bool:
    """Whether rollouts go through `pack_rollout` for these models: --packing, and every one of them computes
    packed batches flat (`models.varlen`)."""
    return cfg.packing and all(varlen_supported(m) for m in models)


def rollout_tokens(values: torch.Tensor, batch: dict, response_mask: torch.Tensor) -> torch.Tensor:
    """Per-token values (N,) of a `pack_rollout` batch in `score_index` order laid out as the rollout's (rows, T)
    response columns, zero past each response."""
    out = torch.zeros(response_mask.shape, dtype=values.dtype, device=values.device)
    # a sequence's scored tokens come in order: sorted by sequence they fill the rows' response masks row by row
    out[response_mask.bool()] = values[torch.argsort(batch["score_seq"], stable=True)]
    return out


def packed_token_logprobs(model, batch: dict, response_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-token response log-probs (rows, T) of a `pack_rollout` batch, zero past each response."""
    _, tok = packed_sequence_logprobs(model, batch, return_tokens=True, temperature=temperature)
    return rollout_tokens(tok, batch, response_mask)


@dataclass
class Scored:
    """A sampled, scored batch: the rollout plus everything both methods need from it."""

    rollout: Rollout
    prompts: list
    texts: list[str]
    scores: torch.Tensor  # (B,) reward source score (+ missing-EOS penalty)
    logp: torch.Tensor  # (B, T) policy log-probs at sampling temperature (the sampler's)
    ref_logp: torch.Tensor  # (B, T)
    entropy: torch.Tensor  # (B, T)
    metrics: dict


class Sampler:
    """Samples responses from the policy (with their log-probs and entropies), gets reference log-probs and rewards.

    The sampler drops finished rows from its live batch (`HFBackend`); the reference log-probs are computed packed
    (`packed_score`: each prompt once for all its samples, chunks of at most `cfg.score_tokens` real tokens) or,
    with `--no-packing` or a model `models.varlen` does not cover, in row chunks of at most `cfg.score_tokens`
    padded tokens (`score_in_chunks`)."""

    def __init__(self, cfg: RLConfig, tokenizer, reference):
        self.cfg = cfg
        self.tok = tokenizer
        self.reference = reference  # None: the policy with its LoRA adapter disabled
        self.backend = HFBackend()
        self.params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                     top_p=cfg.top_p, top_k=cfg.top_k)
        self.reward = reward_source(cfg.reward_model, cfg.reward, timeout=cfg.reward_timeout,
                                    max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                                    chat_template=cfg.chat_template)
        self.monitor = (CallableReward(cfg.monitor_reward, timeout=cfg.reward_timeout, option="--monitor-reward")
                        if cfg.monitor_reward else None)

    def generator(self, policy, stream: int) -> torch.Generator:
        """A sampling RNG seeded by (seed, stream): rollout batch n uses stream n, so sampling does not depend on
        the global RNG and a resumed run samples exactly what an uninterrupted one would. Each process of a
        distributed run has its own streams."""
        from accelerate import PartialState

        gen = torch.Generator(device=next(policy.parameters()).device)
        gen.manual_seed(self.cfg.seed * 1_000_003 + stream + PartialState().process_index * 1_000_000_007)
        return gen

    @torch.no_grad()
    def sample(self, policy, prompt_ids: list[list[int]], prompts: list, generator: torch.Generator) -> Scored:
        cfg = self.cfg
        was_training = policy.training
        policy.eval()
        ro = self.backend.generate(policy, prompt_ids, self.params, pad_id=self.tok.pad_token_id,
                                   eos_id=self.tok.eos_token_id, generator=generator)

        def score(model, entropy: bool = False):  # packed, or row chunks of at most `score_tokens` padded tokens
            if not entropy and packs_rollouts(cfg, model):
                packed = self.packed_score(model, ro)
                if packed is not None:
                    return packed
            return score_in_chunks(lambda *a: response_logprobs(model, *a, temperature=cfg.temperature,
                                                                entropy=entropy), ro, cfg.score_tokens)

        # the sampler's own log-probs and entropies: a forward over the rollout gives the same up to float
        # rounding (tests/test_rollout.py), so the policy is rescored only for a backend that gives no entropy
        logp, entropy = (ro.logprobs, ro.entropy) if ro.entropy is not None else score(policy, entropy=True)
        if self.reference is None:
            with policy.disable_adapter():
                ref_logp = score(policy)
        else:
            ref_device = next(self.reference.parameters()).device
            if ref_device != ro.input_ids.device:
                self.reference.to(ro.input_ids.device)
            ref_logp = score(self.reference)
        policy.train(was_training)
        texts = decode_responses(self.tok, ro)
        scores = self.reward(prompts, texts).to(logp.device)
        bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
        if bad:
            i = bad[0]
            raise AlignkitError(f"the reward ({self.cfg.reward_model or self.cfg.reward}) gave {scores[i].item()} for "
                                f"{len(bad)} of {len(texts)} responses in this batch; the first: prompt {prompts[i]!r}, "
                                f"response {texts[i]!r}")
        raw_scores = scores.clone()
        if cfg.missing_eos_penalty is not None:
            scores = torch.where(ro.finished, scores, scores + cfg.missing_eos_penalty)
        mask = ro.response_mask.float()
        n_tokens = int(ro.response_mask.sum())
        metrics = {
            "reward": float(raw_scores.mean()),
            "reward_std": float(raw_scores.std()) if len(raw_scores) > 1 else 0.0,
            "kl": float((kl_k1(logp, ref_logp) * mask).sum(-1).mean()),
            "kl_k3": float((kl_k3(logp, ref_logp) * mask).sum(-1).mean()),
            "entropy": float(masked_mean(entropy, mask)),
            "response_length": float(ro.lengths.float().mean()),
            "no_eos_share": float((~ro.finished).float().mean()),
            "gen_tokens_per_s": n_tokens / max(ro.seconds, 1e-9),
        }
        if self.monitor is not None:
            metrics["monitor"] = float(self.monitor(prompts, texts).float().mean())
        return Scored(ro, prompts, texts, scores, logp, ref_logp, entropy, metrics)

    def packed_score(self, model, ro: Rollout) -> torch.Tensor | None:
        """Per-token log-probs (B, T) of the rollout's responses under `model`, packed (`pack_rollout`) in chunks
        of whole prompt groups of at most `score_tokens` tokens (prompt + response counted per row: an upper bound
        of the packed size); None when the rollout cannot be packed."""
        rows = ro.input_ids.shape[0]
        total = ro.attention_mask.sum(-1).tolist()
        chunks, cur, size, prev = [], [], 0, None
        for i in range(rows):  # rows of one prompt are kept together (they share its copy)
            same = prev is not None and torch.equal(ro.input_ids[i, : ro.prompt_width], ro.input_ids[prev, : ro.prompt_width])
            if cur and not same and size + total[i] > self.cfg.score_tokens:
                chunks.append(cur)
                cur, size = [], 0
            cur.append(i)
            size, prev = size + total[i], i
        chunks.append(cur)
        out = torch.zeros(ro.response_mask.shape, dtype=torch.float32, device=ro.input_ids.device)
        for idx in chunks:
            idx = torch.tensor(idx, device=ro.input_ids.device)
            batch = pack_rollout(ro.input_ids[idx], ro.attention_mask[idx], ro.prompt_width, ro.response_mask[idx],
                                 self.tok.pad_token_id)
            if batch is None:
                return None
            out[idx] = packed_token_logprobs(model, batch, ro.response_mask[idx], self.cfg.temperature)
        return out


def make_reference(cfg: RLConfig, policy):
    """A frozen copy of the starting policy, or None for the LoRA-disabled base."""
    if cfg.reference == "lora-disabled":
        return None
    ref = copy.deepcopy(policy)
    ref.requires_grad_(False)
    return ref.eval()


def prompt_items(cfg: RLConfig, tokenizer, prompts: list) -> list[dict]:
    enc = make_encoder(cfg, tokenizer)
    return [{"prompt": p, "prompt_ids": enc.truncate_prompt(enc.prompt_ids(p))} for p in prompts]


def collate_prompts(items: list[dict]) -> dict:
    return {"prompts": [it["prompt"] for it in items], "prompt_ids": [it["prompt_ids"] for it in items]}


def make_eval(cfg: RLConfig, sampler: Sampler, items: list[dict]):
    """Held-out evaluation: mean reward (and `monitor` score) and sequence KL on up to --eval-samples prompts (fixed sample), sampled
    in batches of prompts of similar length (sorted by length: less left padding)."""
    chosen = sorted(items[: cfg.eval_samples], key=lambda it: len(it["prompt_ids"]))

    def evaluate(model) -> dict:
        if not chosen:
            return {}
        policy = getattr(model, "policy", model)
        gen = sampler.generator(policy, -1)  # the same sampling noise at every evaluation
        results = []
        for i in range(0, len(chosen), cfg.batch_size):
            part = chosen[i : i + cfg.batch_size]
            s = sampler.sample(policy, [it["prompt_ids"] for it in part], [it["prompt"] for it in part], gen)
            results.append((s.metrics, len(part)))
        keys = ("reward", "kl", "kl_k3", "response_length", "no_eos_share") + (("monitor",) if sampler.monitor else ())
        total = sum(n for _, n in results)
        return {k: sum(m[k] * n for m, n in results) / total for k in keys}

    return evaluate


def setup_online(cfg: RLConfig, *, value: bool = False):
    """Prompts, policy (+ LoRA), tokenizer, reference and sampler for an online method."""
    train_prompts, eval_prompts, info = load_inputs(cfg)
    policy, tok = policy_and_tokenizer(cfg)
    reference = make_reference(cfg, policy)
    sampler = Sampler(cfg, tok, reference)
    train_items = prompt_items(cfg, tok, train_prompts)
    eval_items = prompt_items(cfg, tok, eval_prompts)
    random.Random(cfg.seed).shuffle(eval_items)
    say(f"reward: {sampler.reward.name}; reference: {cfg.reference}; {len(train_items)} training prompts, "
        f"{len(eval_items)} held out")
    return policy, tok, sampler, train_items, eval_items, info

