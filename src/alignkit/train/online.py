"""What the online methods share: prompt loading, the reference, sampling + scoring a batch, minibatches, and
evaluation.

The per-method parts (advantages and losses) are in `ppo.py`, `rloo.py`, `grpo.py` and `online_dpo.py`."""

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
from alignkit.models.logprobs import capabilities, score
from alignkit.rollout.backends import make_backend
from alignkit.rollout.engine import (
    Rollout,
    SamplingParams,
    decode_responses,
)
from alignkit.rollout.rewards import CallableReward, reward_source
from alignkit.train.common import make_encoder, policy_and_tokenizer
from alignkit.train.config import RLConfig
from alignkit.train.inputs import load_inputs


def rollout_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
                  response_mask: torch.Tensor, pad_id: int, *, packed: bool = True) -> dict:
    """Rollout rows (left-padded prompts, right-padded responses) as a training batch on the rollout's device:
    packed padding-free with each distinct prompt laid out once, or one sequence per row
    (`data.collate.pack_responses`). Sequence i is row i."""
    lengths = response_mask.sum(-1).tolist()
    prompt_mask = attention_mask[:, :prompt_width].bool()
    prompts = [ids[m].tolist() for ids, m in zip(input_ids[:, :prompt_width].cpu(), prompt_mask.cpu(), strict=True)]
    responses = [row[:n] for row, n in zip(input_ids[:, prompt_width:].tolist(), lengths, strict=True)]
    return send_to_device(pack_responses(prompts, responses, pad_id, one_per_row=not packed), input_ids.device)


def packs_rollouts(cfg: RLConfig, *models) -> bool:
    """Whether rollouts are packed for these models (`rollout_batch`): --packing, and every one of them computes
    packed batches flat (`models.varlen`)."""
    return cfg.packing and all(capabilities(m).varlen for m in models)


def rollout_tokens(values: torch.Tensor, batch: dict, response_mask: torch.Tensor) -> torch.Tensor:
    """Per-token values (N,) of a `rollout_batch` in `score_index` order laid out as the rollout's (rows, T)
    response columns, zero past each response (and at a first token that was not scored: an empty prompt)."""
    out = torch.zeros(response_mask.shape, dtype=values.dtype, device=values.device)
    n = response_mask.sum(-1, keepdim=True)
    scored = torch.bincount(batch["score_seq"], minlength=n.shape[0])[:, None]
    t = torch.arange(response_mask.shape[1], device=out.device)
    # a sequence's scored tokens come in order and end with its response: sorted by sequence they fill, row by
    # row, the last `scored` columns of each response
    out[(t < n) & (t >= n - scored)] = values[torch.argsort(batch["score_seq"], stable=True)]
    return out


def minibatches(tensors: dict[str, torch.Tensor], size: int, epochs: int, generator: torch.Generator,
                make_batch) -> list[dict]:
    """`epochs` shuffled passes over the rows of `tensors`, cut into minibatches of `size` rows: each holds its
    rows of `tensors`, `batch` (`make_batch` of them: the rows as a training batch) and `n`, its row count."""
    n = next(iter(tensors.values())).shape[0]
    out = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator, device=generator.device).cpu()
        for i in range(0, n, size):
            idx = order[i : i + size]
            rows = {k: v[idx] for k, v in tensors.items()}
            out.append({**rows, "batch": make_batch(rows), "n": len(idx)})
    return out


def sample_groups(sampler: Sampler, model, batch: dict, k: int, state: dict) -> tuple[Scored, torch.Generator]:
    """`k` samples of every prompt of `batch` (rows of one prompt consecutive), scored, from the sampling stream of
    rollout batch `state["rollouts"]` (then counted); and that stream's generator, which goes on to shuffle the
    minibatches."""
    gen = sampler.generator(model, state["rollouts"])
    state["rollouts"] += 1
    ids = [p for p in batch["prompt_ids"] for _ in range(k)]
    prompts = [p for p in batch["prompts"] for _ in range(k)]
    return sampler.sample(model, ids, prompts, gen), gen


def rollout_minibatches(cfg: RLConfig, ro: Rollout, per_row: dict, gen: torch.Generator, pad_id: int,
                        packed: bool) -> list[dict]:
    """`minibatches` over the rows of a rollout and the per-row tensors of a method (`per_row`; None entries, such
    as `ref_logp` without a reference, are left out), each minibatch carrying its `rollout_batch`."""
    tensors = {"input_ids": ro.input_ids, "attention_mask": ro.attention_mask, "response_mask": ro.response_mask,
               **{k: v for k, v in per_row.items() if v is not None}}
    return minibatches(tensors, cfg.mini_batch_size, cfg.ppo_epochs, gen,
                       lambda rows: rollout_batch(rows["input_ids"], rows["attention_mask"], ro.prompt_width,
                                                  rows["response_mask"], pad_id, packed=packed))


@dataclass
class Scored:
    """A sampled, scored batch: the rollout plus everything both methods need from it."""

    rollout: Rollout
    prompts: list
    texts: list[str]
    scores: torch.Tensor  # (B,) reward source score (+ missing-EOS penalty)
    logp: torch.Tensor  # (B, T) policy log-probs at sampling temperature (the sampler's)
    ref_logp: torch.Tensor | None  # (B, T); None without a reference (GRPO's --reference none)
    entropy: torch.Tensor  # (B, T)
    metrics: dict


class Sampler:
    """Samples responses from the policy (with their log-probs and entropies), gets reference log-probs and rewards.

    Sampling goes through `cfg.backend` (`rollout.backends`); the reference log-probs are computed by
    `score_rollout`: each prompt once for all its samples when packed, in chunks of at most `cfg.score_tokens`
    tokens."""

    def __init__(self, cfg: RLConfig, tokenizer, reference, reward=None):
        self.cfg = cfg
        self.tok = tokenizer
        self.reference = reference  # the frozen copy; None for cfg.reference 'lora-disabled' and 'none'
        self.backend = make_backend(cfg.backend, cfg.model, seed=cfg.seed)
        self.params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                     top_p=cfg.top_p, top_k=cfg.top_k)
        self.reward = reward or reward_source(cfg.reward_model, cfg.reward, timeout=cfg.reward_timeout,
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
        # the sampler's own log-probs and entropies: a forward over the rollout gives the same up to float
        # rounding (tests/test_rollout.py), so the policy is rescored only for a backend that gives no entropy, or
        # under autocast: bf16's rounding in the decode path differs from the training pass's by enough to move
        # the importance ratios far from 1 before any update
        exact = (self.backend.exact_logprobs and ro.entropy is not None
                 and not torch.is_autocast_enabled(ro.input_ids.device.type))
        logp, entropy = (ro.logprobs, ro.entropy) if exact else self.score_rollout(policy, ro, entropy=True)
        if cfg.reference == "none":  # GRPO with β = 0: nothing needs it
            ref_logp = None
        elif cfg.reference == "lora-disabled":
            with policy.disable_adapter():
                ref_logp = self.score_rollout(policy, ro)
        else:
            ref_device = next(self.reference.parameters()).device
            if ref_device != ro.input_ids.device:
                self.reference.to(ro.input_ids.device)
            ref_logp = self.score_rollout(self.reference, ro)
        policy.train(was_training)
        texts = decode_responses(self.tok, ro)
        scores = self.reward(prompts, texts).to(logp.device)
        bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
        if bad:
            i = bad[0]
            raise AlignkitError(f"the reward ({self.reward.name}) gave {scores[i].item()} for "
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
            "entropy": float(masked_mean(entropy, mask)),
            "response_length": float(ro.lengths.float().mean()),
            "no_eos_share": float((~ro.finished).float().mean()),
            "gen_tokens_per_s": n_tokens / max(ro.seconds, 1e-9),
        }
        if ref_logp is not None:
            metrics["kl"] = float((kl_k1(logp, ref_logp) * mask).sum(-1).mean())
            metrics["kl_k3"] = float((kl_k3(logp, ref_logp) * mask).sum(-1).mean())
        if self.monitor is not None:
            metrics["monitor"] = float(self.monitor(prompts, texts).float().mean())
        return Scored(ro, prompts, texts, scores, logp, ref_logp, entropy, metrics)

    def score_rollout(self, model, ro: Rollout, *, entropy: bool = False):
        """Per-token log-probs (B, T) of the rollout's responses under `model` at the sampling temperature, and
        with `entropy=True` their entropies: `rollout_batch` (packed when `packs_rollouts`) in chunks of whole
        prompt groups of at most `score_tokens` tokens (prompt + response counted per row)."""
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
        packed = packs_rollouts(self.cfg, model)
        logp = torch.zeros(ro.response_mask.shape, dtype=torch.float32, device=ro.input_ids.device)
        ent = torch.zeros_like(logp)
        for idx in chunks:
            idx = torch.tensor(idx, device=ro.input_ids.device)
            mask = ro.response_mask[idx]
            batch = rollout_batch(ro.input_ids[idx], ro.attention_mask[idx], ro.prompt_width, mask,
                                  self.tok.pad_token_id, packed=packed)
            s = score(model, batch, temperature=self.cfg.temperature, entropy=entropy)
            logp[idx] = rollout_tokens(s.tokens, batch, mask)
            if entropy:
                ent[idx] = rollout_tokens(s.entropy, batch, mask)
        return (logp, ent) if entropy else logp


def make_reference(cfg: RLConfig, policy):
    """A frozen copy of the starting policy, or None for the LoRA-disabled base (and for no reference)."""
    if cfg.reference in ("lora-disabled", "none"):
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
        keys = ("reward", "kl", "kl_k3", "response_length", "no_eos_share", "monitor")
        total = sum(n for _, n in results)
        return {k: sum(m[k] * n for m, n in results) / total for k in keys if k in results[0][0]}

    return evaluate


def setup_online(cfg: RLConfig, *, value: bool = False, reward=None):
    """Prompts, policy (+ LoRA), tokenizer, reference and sampler for an online method; `reward` (a callable
    (prompts, texts) -> scores with a `name`) replaces the one the config names."""
    train_prompts, eval_prompts, info = load_inputs(cfg)
    policy, tok = policy_and_tokenizer(cfg)
    reference = make_reference(cfg, policy)
    sampler = Sampler(cfg, tok, reference, reward)
    train_items = prompt_items(cfg, tok, train_prompts)
    eval_items = prompt_items(cfg, tok, eval_prompts)
    random.Random(cfg.seed).shuffle(eval_items)
    say(f"reward: {sampler.reward.name}; reference: {cfg.reference}; {len(train_items)} training prompts, "
        f"{len(eval_items)} held out")
    return policy, tok, sampler, train_items, eval_items, info

