"""Online (iterative) DPO: each rollout batch samples two responses per prompt from the current policy, the reward
source (a reward model or a function) or a judge (`judges`, both orders) picks the better one, and the DPO
family's loss is applied to the pairs (docs/algorithms.md, Online DPO). Pairs whose two responses score the same
carry no preference and are left out (counted as `tied_share`).

The reference log-probs come with the samples (the sampler scores every rollout with the reference); the
policy's are taken again at each update, both at the sampling temperature."""

from __future__ import annotations

import torch

from alignkit.console import say
from alignkit.losses import implicit_accuracy, implicit_rewards, preference_loss
from alignkit.models.logprobs import score
from alignkit.train.common import reuse_freed_memory, saver
from alignkit.train.config import OnlineDPOConfig
from alignkit.train.loop import Task, TrainResult, train
from alignkit.train.online import (
    collate_prompts,
    make_eval,
    minibatches,
    packs_rollouts,
    rollout_batch,
    sample_groups,
    setup_online,
)


def preference_pairs(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen rows, rejected rows) of the prompts whose two samples (rows 2i, 2i+1) score differently; the
    higher score is chosen."""
    a, b = scores[0::2], scores[1::2]
    keep = (a != b).nonzero().flatten()
    first = a[keep] > b[keep]
    rows = 2 * keep
    return torch.where(first, rows, rows + 1), torch.where(first, rows + 1, rows)


class JudgeScores:
    """A judge as online DPO's labeller: rows 2i and 2i+1 (the two samples of a prompt) score p and 1 − p, with p
    the judge's P(row 2i better) over both orders and every rubric (`judges.judge_pairs`); a pair the judge left
    unanswered scores ½ and ½, a tie, so it is left out."""

    def __init__(self, cfg: OnlineDPOConfig):
        from alignkit.judges import check_judge, judge_name, make_judge, open_cache

        self.rubrics = check_judge(cfg)
        self.judge = make_judge(cfg)
        self.cache = open_cache(cfg, self.judge)
        self.name = f"judge {judge_name(cfg)}"

    def __call__(self, prompts: list, texts: list[str]) -> torch.Tensor:
        from alignkit.judges import judge_pairs

        j = judge_pairs(self.judge, prompts[0::2], texts[0::2], texts[1::2], rubrics=self.rubrics, cache=self.cache,
                        progress=False)
        p = torch.tensor([0.5 if x is None else x for x in j.p_a], dtype=torch.float32)
        return torch.stack([p, 1 - p], 1).flatten()


def build_online_dpo(cfg: OnlineDPOConfig) -> Task:
    judged = bool(cfg.judge or cfg.judge_url)
    if judged and cfg.eval_samples:
        say("held-out reward evaluation is off: a judge compares pairs and gives no score per response (measure the "
            "policy with `alignkit eval --judge`)")
        cfg = cfg.model_copy(update={"eval_samples": 0})
    policy, tok, sampler, train_items, eval_items, info = setup_online(cfg, reward=JudgeScores(cfg) if judged else None)
    state = {"rollouts": 0}
    pack = packs_rollouts(cfg, policy)  # the two samples of a prompt share its copy

    def experience(model, batch):
        s, gen = sample_groups(sampler, model, batch, 2, state)
        ro = s.rollout
        chosen, rejected = preference_pairs(s.scores)
        seq_ref = (s.ref_logp * ro.response_mask).sum(-1)
        metrics = {**s.metrics, "tied_share": 1 - len(chosen) / (len(s.scores) // 2),
                   "score_margin": float((s.scores[chosen] - s.scores[rejected]).mean()) if len(chosen) else 0.0}
        if not len(chosen):
            return [], metrics
        per_pair = {"chosen_row": chosen, "rejected_row": rejected, "ref_chosen": seq_ref[chosen],
                    "ref_rejected": seq_ref[rejected]}

        def pair_batch(rows):
            idx = torch.cat([rows["chosen_row"], rows["rejected_row"]])  # chosen sequences first, as in pair batches
            return rollout_batch(ro.input_ids[idx], ro.attention_mask[idx], ro.prompt_width, ro.response_mask[idx],
                                 tok.pad_token_id, packed=pack)

        return minibatches(per_pair, max(1, cfg.mini_batch_size // 2), cfg.ppo_epochs, gen, pair_batch), metrics

    def loss(model, mb):
        logp = score(model, mb["batch"], temperature=cfg.temperature).logp
        pc, pr = logp[: mb["n"]], logp[mb["n"] :]
        rc, rr = mb["ref_chosen"], mb["ref_rejected"]
        losses = preference_loss(cfg.loss, pc, pr, rc, rr, beta=cfg.beta)
        chosen_r, rejected_r = implicit_rewards(pc, rc, cfg.beta), implicit_rewards(pr, rr, cfg.beta)
        return losses.mean(), {"accuracy": implicit_accuracy(pc, pr, rc, rr).mean(), "margin": (chosen_r - rejected_r).mean()}

    per_step = cfg.ppo_epochs * -(-cfg.batch_size // max(1, cfg.mini_batch_size // 2))
    return Task("online-dpo", policy, train_items, eval_items, collate_prompts, loss, saver(tok), info,
                experience=experience, updates_per_step=per_step, eval_fn=make_eval(cfg, sampler, eval_items), state=state)


def run_online_dpo(cfg: OnlineDPOConfig) -> TrainResult:
    """Online DPO: train `cfg.model` on pairs of its own samples labelled by `cfg.reward_model`, `cfg.reward` or
    a judge;
    the policy is saved in `cfg.output_dir`."""
    reuse_freed_memory()
    return train(build_online_dpo(cfg), cfg)
