"""RLOO: k samples per prompt, sequence reward R_i = score − β·KL_i, leave-one-out advantage
A_i = R_i − mean_{j≠i} R_j, loss −A_i·logπ(y_i), clipped when a batch is used for several passes
(docs/algorithms.md, RLOO)."""

from __future__ import annotations

from alignkit.losses import kl_k1, rloo_advantages, rloo_loss
from alignkit.models.logprobs import score
from alignkit.train.common import reuse_freed_memory, saver
from alignkit.train.config import RLOOConfig
from alignkit.train.loop import Task, TrainResult, train
from alignkit.train.online import (
    collate_prompts,
    make_eval,
    packs_rollouts,
    rollout_minibatches,
    sample_groups,
    setup_online,
)


def build_rloo(cfg: RLOOConfig) -> Task:
    policy, tok, sampler, train_items, eval_items, info = setup_online(cfg)
    k = cfg.k
    state = {"rollouts": 0}

    pack = packs_rollouts(cfg, policy)  # the samples of a prompt share its copy

    def experience(model, batch):
        s, gen = sample_groups(sampler, model, batch, k, state)
        mask = s.rollout.response_mask.float()
        seq_logp = (s.logp * mask).sum(-1)
        kl = (kl_k1(s.logp, s.ref_logp) * mask).sum(-1)
        rewards = s.scores - cfg.beta * kl
        adv = rloo_advantages(rewards, k)
        metrics = {**s.metrics, "beta": cfg.beta, "rloo_reward": float(rewards.mean())}
        per_row = {"old_seq_logp": seq_logp, "advantages": adv}
        return rollout_minibatches(cfg, s.rollout, per_row, gen, tok.pad_token_id, pack), metrics

    def loss(model, mb):
        seq = score(model, mb["batch"], temperature=cfg.temperature).logp
        # clipped ratio: after the first update of a batch the samples are slightly off-policy; at ratio 1
        # the gradient is exactly REINFORCE with the leave-one-out baseline
        value, stats = rloo_loss(seq, mb["old_seq_logp"], mb["advantages"], cfg.cliprange)
        return value, {**stats, "approx_kl": (mb["old_seq_logp"] - seq.detach()).mean()}

    per_step = cfg.ppo_epochs * -(-(cfg.batch_size * k) // cfg.mini_batch_size)
    return Task("rloo", policy, train_items, eval_items, collate_prompts, loss, saver(tok), info,
                experience=experience, updates_per_step=per_step, eval_fn=make_eval(cfg, sampler, eval_items), state=state)


def run_rloo(cfg: RLOOConfig) -> TrainResult:
    """RLOO-train `cfg.model` against `cfg.reward_model` or `cfg.reward`; the policy is saved in `cfg.output_dir`."""
    reuse_freed_memory()
    return train(build_rloo(cfg), cfg)

