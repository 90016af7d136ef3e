"""PPO with a per-token KL penalty to the reference (docs/algorithms.md, PPO).

Per rollout batch: sample responses, score them, r_t = −β(logπ − logπ_ref) with the score added at the last
response token, GAE over the value model's estimates, whitened advantages; then `ppo_epochs` passes of
clipped policy + value updates over minibatches. β is fixed or adaptive (its value is checkpointed).
"""

from __future__ import annotations

import torch

from alignkit.losses import (
    adaptive_kl_beta,
    gae,
    masked_whiten,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
)
from alignkit.models.load import load_reward_model, save_model
from alignkit.models.logprobs import score
from alignkit.train.common import mean_over_processes, process_count, reuse_freed_memory, what_trains
from alignkit.train.config import PPOConfig
from alignkit.train.loop import Task, TrainResult, train
from alignkit.train.online import (
    collate_prompts,
    make_eval,
    packs_rollouts,
    rollout_batch,
    rollout_minibatches,
    rollout_tokens,
    sample_groups,
    setup_online,
)


class PolicyAndValue(torch.nn.Module):
    """The two trained models of PPO in one module, so one optimizer, one checkpoint and one prepare()."""

    def __init__(self, policy, value):
        super().__init__()
        self.policy = policy
        self.value = value


def build_ppo(cfg: PPOConfig) -> Task:
    policy, tok, sampler, train_items, eval_items, info = setup_online(cfg)
    value_init = cfg.value_model or cfg.reward_model or cfg.model
    value = what_trains(load_reward_model(value_init, dtype=cfg.dtype), cfg, reward=True)
    info["value_model_init"] = value_init
    model = PolicyAndValue(policy, value)
    state = {"beta": cfg.beta, "rollouts": 0}

    pack = packs_rollouts(cfg, policy, value)

    def token_values(value_model, batch, response_mask):
        """V_t per response token (rows, T), zero past each response."""
        return rollout_tokens(score(value_model, batch, "values").values, batch, response_mask)

    def experience(model, batch):
        s, gen = sample_groups(sampler, model.policy, batch, 1, state)
        ro, mask = s.rollout, s.rollout.response_mask.float()
        with torch.no_grad():
            whole = rollout_batch(ro.input_ids, ro.attention_mask, ro.prompt_width, ro.response_mask,
                                  tok.pad_token_id, packed=pack)
            values = token_values(model.value, whole, ro.response_mask)
            rewards = per_token_rewards(s.scores, s.logp, s.ref_logp, mask, state["beta"])
            adv, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                adv = masked_whiten(adv, mask)
        metrics = {**s.metrics, "beta": state["beta"], "value_mean": float((values * mask).sum() / mask.sum())}
        if cfg.adaptive_kl:
            kl = mean_over_processes(s.metrics["kl"])  # every process keeps the same β
            n = len(s.texts) * process_count()
            state["beta"] = adaptive_kl_beta(state["beta"], kl, cfg.kl_target, n, cfg.kl_horizon)
        per_row = {"old_logp": s.logp, "old_values": values, "advantages": adv, "returns": returns}
        return rollout_minibatches(cfg, ro, per_row, gen, tok.pad_token_id, pack), metrics

    def loss(model, mb):
        inner = getattr(model, "module", model)
        batch, mask = mb["batch"], mb["response_mask"]  # one batch serves the policy and the value model
        logp = rollout_tokens(score(inner.policy, batch, temperature=cfg.temperature).tokens, batch, mask)
        values = token_values(inner.value, batch, mask)
        pg, pstats = ppo_policy_loss(logp, mb["old_logp"], mb["advantages"], mask.float(), cfg.cliprange)
        vf, vstats = ppo_value_loss(values, mb["old_values"], mb["returns"], mask.float(), cfg.cliprange_value)
        return pg + cfg.vf_coef * vf, {"policy_loss": pg.detach(), "value_loss": vf.detach(), **pstats, **vstats}

    def save(model, out):
        save_model(model.policy, tok, out)
        save_model(model.value, tok, out / "value")

    per_step = cfg.ppo_epochs * -(-cfg.batch_size // cfg.mini_batch_size)
    return Task("ppo", model, train_items, eval_items, collate_prompts, loss, save, info, experience=experience,
                updates_per_step=per_step, eval_fn=make_eval(cfg, sampler, eval_items), state=state)


def run_ppo(cfg: PPOConfig) -> TrainResult:
    """PPO-train `cfg.model` against `cfg.reward_model` or `cfg.reward`; the policy is saved in `cfg.output_dir`
    and the value model in `cfg.output_dir/value`."""
    reuse_freed_memory()
    return train(build_ppo(cfg), cfg)
