"""GRPO: G samples per prompt, advantage A_i = the reward's deviation within its group (scaled by the group's std
or not), a clipped per-token surrogate with ε_low/ε_high, three loss aggregations and an optional k3 KL to the
reference (docs/algorithms.md, GRPO; `losses.group_advantages`, `losses.grpo_loss`)."""

from __future__ import annotations

from alignkit.losses import group_advantages, grpo_loss
from alignkit.models.logprobs import score
from alignkit.train.common import reuse_freed_memory, saver
from alignkit.train.config import GRPOConfig
from alignkit.train.loop import Task, TrainResult, train
from alignkit.train.online import (
    collate_prompts,
    make_eval,
    packs_rollouts,
    rollout_minibatches,
    rollout_tokens,
    sample_groups,
    setup_online,
)


def build_grpo(cfg: GRPOConfig) -> Task:
    policy, tok, sampler, train_items, eval_items, info = setup_online(cfg)
    g = cfg.num_generations
    state = {"rollouts": 0}
    pack = packs_rollouts(cfg, policy)  # the samples of a prompt share its copy

    def experience(model, batch):
        s, gen = sample_groups(sampler, model, batch, g, state)
        adv = group_advantages(s.scores, g, scale=cfg.scaled)
        flat = (s.scores.view(-1, g).std(dim=1) == 0).float().mean()
        metrics = {**s.metrics, "beta": cfg.beta, "flat_groups": float(flat)}
        per_row = {"old_logp": s.logp, "ref_logp": s.ref_logp, "advantages": adv}
        return rollout_minibatches(cfg, s.rollout, per_row, gen, tok.pad_token_id, pack), metrics

    def loss(model, mb):
        batch, mask = mb["batch"], mb["response_mask"]
        logp = rollout_tokens(score(model, batch, temperature=cfg.temperature).tokens, batch, mask)
        return grpo_loss(logp, mb["old_logp"], mb["advantages"], mask, epsilon_low=cfg.cliprange,
                         epsilon_high=cfg.epsilon_high, aggregation=cfg.loss_type, max_length=cfg.max_new_tokens,
                         ref_logp=mb.get("ref_logp"), beta=cfg.beta)

    per_step = cfg.ppo_epochs * -(-(cfg.batch_size * g) // cfg.mini_batch_size)
    return Task("grpo", policy, train_items, eval_items, collate_prompts, loss, saver(tok), info,
                experience=experience, updates_per_step=per_step, eval_fn=make_eval(cfg, sampler, eval_items), state=state)


def run_grpo(cfg: GRPOConfig) -> TrainResult:
    """GRPO-train `cfg.model` against `cfg.reward_model` or `cfg.reward`; the policy is saved in `cfg.output_dir`."""
    reuse_freed_memory()
    return train(build_grpo(cfg), cfg)
