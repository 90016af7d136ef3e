"""Reward model: backbone + scalar head trained with Bradley-Terry on pairs (hard or soft labels, margins)
or the K-wise InstructGPT loss on rankings (docs/algorithms.md, Reward model).

Pairs of one prompt that share responses are grouped (`group_pairs`): a batch holds `batch_size` groups, each
distinct response is scored once, and every pair contributes its Bradley-Terry term. Pairs that share no
response are groups of one, the plain pairwise batch; a panel's votes on every pair of K samples of a prompt
are one group: K sequences scored for K(K−1)/2 comparisons."""

from __future__ import annotations

from functools import partial

import torch
from accelerate.utils import send_to_device

from alignkit.console import say
from alignkit.data.collate import collate_rankings, group_pairs, pack_rankings, with_pair_index
from alignkit.losses import bradley_terry_loss, ranking_loss
from alignkit.models.load import unwrap
from alignkit.models.logprobs import score
from alignkit.rollout.rewards import OFFSET_KEY  # stored in config.json; scores are r(x, y) - offset
from alignkit.train.common import (
    encode_all,
    make_encoder,
    policy_and_tokenizer,
    reuse_freed_memory,
    saver,
    use_packing,
)
from alignkit.train.config import RewardConfig
from alignkit.train.inputs import is_rankings, load_inputs
from alignkit.train.loop import Task, TrainResult, train


def batch_scores(model, batch) -> torch.Tensor:
    """One reward per sequence of a batch."""
    return score(model, batch, "reward").reward


def pair_step(model, batch):
    """Bradley-Terry over the batch's pairs: `pair_chosen`/`pair_rejected` index the scored sequences
    (`with_pair_index`)."""
    r = batch_scores(model, batch)
    rc, rr = r[batch["pair_chosen"]], r[batch["pair_rejected"]]
    loss = bradley_terry_loss(rc, rr, margin=batch["margin"], label=batch["label"]).mean()
    return loss, {"accuracy": (rc > rr).float().mean(), "reward_chosen": rc.mean(), "reward_rejected": rr.mean(),
                  "margin": (rc - rr).mean()}


def ranking_step(model, batch):
    r = batch_scores(model, batch)
    idx = batch["rank_index"]
    valid = idx >= 0
    grid = r[idx.clamp(min=0)]
    loss = ranking_loss(grid, valid).mean()
    # accuracy over adjacent ranked pairs
    ok = (grid[:, :-1] > grid[:, 1:]) & valid[:, 1:]
    return loss, {"accuracy": ok.sum() / valid[:, 1:].sum().clamp(min=1), "reward_mean": r.mean()}


def normalizer(items: list[dict], collate, batch_size: int, limit: int):
    """Sets the stored offset so that the rewards of training responses have mean 0 (docs/algorithms.md): the responses
    of `limit` items evenly spaced through the training data (all of them when there are fewer); batches made by
    the training collator (packed or padded). The mean of a few hundred responses pins the offset to a small
    fraction of the rewards' spread at a fraction of a full pass's cost."""
    n_items = len(items)
    chosen = items if n_items <= limit else [items[i * n_items // limit] for i in range(limit)]

    def apply(model) -> None:
        model.eval()
        dev = next(model.parameters()).device
        scores = []
        with torch.inference_mode():
            for i in range(0, len(chosen), batch_size):
                b = send_to_device(collate(chosen[i : i + batch_size]), dev)
                scores.append(batch_scores(model, b))
        offset = float(torch.cat(scores).mean())
        unwrap(model).config.update({OFFSET_KEY: offset})
        n = sum(t.numel() for t in scores)
        say(f"reward offset {offset:.4f} stored (mean over {n} responses of {len(chosen)} of the {n_items} training items)")

    return apply


def build_reward(cfg: RewardConfig) -> Task:
    rankings = is_rankings(cfg)
    train_recs, eval_recs, info = load_inputs(cfg)
    model, tok = policy_and_tokenizer(cfg, reward=True)
    unwrap(model).config.pad_token_id = tok.pad_token_id
    enc = make_encoder(cfg, tok)
    pack = dict(pack_tokens=cfg.pack_tokens, shared_prompt=cfg.shared_prompt, varlen=cfg.varlen) if use_packing(cfg, model) else None
    grid = partial(pack_rankings, pad_id=tok.pad_token_id, **pack) if pack else partial(collate_rankings,
                                                                                          pad_id=tok.pad_token_id)
    if rankings:
        def item(r):
            return enc.encode_responses(r.prompt, r.responses)
        collate, step = grid, ranking_step
    else:
        item, step = enc.encode_pair, pair_step

        def collate(items):
            return with_pair_index(grid(items), items)
    train_items = encode_all(train_recs, item, "train", cfg.progress)
    eval_items = encode_all(eval_recs, item, "eval", cfg.progress)
    if not rankings:
        train_items, eval_items = group_pairs(train_items), group_pairs(eval_items)
    info["truncation"] = dict(enc.counts)
    task = Task("rm", model, train_items, eval_items, collate, step, saver(tok), info)
    if cfg.normalize:
        task.before_save = normalizer(train_items, collate, cfg.eval_batch_size or 4 * cfg.batch_size, cfg.offset_pairs)
    return task


def run_reward(cfg: RewardConfig) -> TrainResult:
    """Train a reward model; saved so `AutoModelForSequenceClassification.from_pretrained` loads it."""
    reuse_freed_memory()
    return train(build_reward(cfg), cfg)
