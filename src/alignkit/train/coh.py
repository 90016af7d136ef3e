"""Chain of Hindsight: cross-entropy on the model-output tokens of feedback-annotated sequences, averaged per
sequence (docs/algorithms.md). Options: random attention dropping over past positions, an SFT term λ."""

from __future__ import annotations

import json

import torch

from alignkit.console import say
from alignkit.data.coh import coh_prompt, coh_sequences
from alignkit.data.collate import pack_units
from alignkit.data.records import response_text
from alignkit.data.tokenize import Encoder
from alignkit.losses import coh_loss, sft_loss
from alignkit.models.logprobs import score
from alignkit.train.common import (
    encode_all,
    make_encoder,
    policy_and_tokenizer,
    reuse_freed_memory,
    saver,
    use_packing,
)
from alignkit.train.config import CoHConfig
from alignkit.train.inputs import load_inputs
from alignkit.train.loop import Task, TrainResult, train

COH_FILE = "alignkit_coh.json"  # saved with the model: the feedback phrases, so inference can end prompts with
# the positive one (evaluation does this automatically)


def encode_coh(enc: Encoder, pair, cfg: CoHConfig) -> dict:
    """Token rows (ids, trained-mask) for every CoH sequence of a pair, plus the plain SFT row."""
    rows = []
    forms = cfg.forms.split(",")
    for phrase, segs in coh_sequences(response_text(pair.chosen), response_text(pair.rejected), positive=cfg.positive,
                                      negative=cfg.negative, forms=forms):
        prompt = enc.truncate_prompt(enc.prompt_ids(coh_prompt(pair.prompt, phrase)))
        ids, mask = list(prompt), [0] * len(prompt)
        for text, trained in segs:
            t = enc.text_ids(text)
            ids += t
            mask += [int(trained)] * len(t)
        ids.append(enc.eos_id)
        mask.append(1)
        if len(ids) > enc.max_length:
            enc.counts["response_truncated"] += 1
            ids, mask = ids[: enc.max_length], mask[: enc.max_length]
        rows.append((ids, mask))
    sft = None
    if cfg.sft_weight > 0:
        sft = enc.encode(pair.prompt, pair.chosen)
    return {"rows": rows, "sft": sft}


def make_collate(pad_id: int, pack_tokens: int | None = None, varlen: bool = True):
    """Batches of the CoH rows of every item, then their SFT rows: packed when `pack_tokens` is given
    (`data.collate.pack_units`), else one per row."""
    def collate(items):
        rows = [r for it in items for r in it["rows"]]
        n_coh = len(rows)
        rows += [it["sft"] for it in items if it["sft"] is not None]
        batch = pack_units([[(ids, mask, None, i)] for i, (ids, mask) in enumerate(rows)], pad_id,
                           pack_tokens=pack_tokens or 0, varlen=varlen, one_per_row=pack_tokens is None)
        batch["n_coh"] = torch.tensor(n_coh)
        return batch

    return collate


def drop_attention(batch: dict, p: float) -> dict:
    """A copy of a one-sequence-per-row batch whose attention mask hides each position with probability `p` (every
    query keeps the first position), the CoH paper's random masking of past tokens."""
    mask = batch["attention_mask"]
    drop = torch.rand(mask.shape, device=mask.device) < p
    drop[:, 0] = False
    return {**batch, "attention_mask": mask.masked_fill(drop, 0)}


def make_coh_step(cfg: CoHConfig):
    """The CoH loss (`losses.coh_loss`) over the feedback sequences and, with `cfg.sft_weight`, the SFT term
    (`losses.sft_loss`) over the plain ones, from the scored tokens' log-probs."""
    def step(model, batch):
        if model.training and cfg.attention_drop > 0:
            batch = drop_attention(batch, cfg.attention_drop)
        tokens, seq = score(model, batch).tokens, batch["score_seq"]
        feedback = seq < int(batch["n_coh"])
        loss = coh_loss(tokens[feedback], seq[feedback])
        metrics = {"coh_loss": loss.detach()}
        if batch["last_index"].shape[0] > int(batch["n_coh"]):
            sft = sft_loss(tokens[~feedback])
            loss = loss + cfg.sft_weight * sft
            metrics["sft_loss"] = sft.detach()
        return loss, metrics

    return step


def build_coh(cfg: CoHConfig) -> Task:
    train_recs, eval_recs, info = load_inputs(cfg)
    model, tok = policy_and_tokenizer(cfg)
    enc = make_encoder(cfg, tok)
    train_items = encode_all(train_recs, lambda p: encode_coh(enc, p, cfg), "train", cfg.progress)
    eval_items = encode_all(eval_recs, lambda p: encode_coh(enc, p, cfg), "eval", cfg.progress)
    info["truncation"] = dict(enc.counts)
    save_model = saver(tok)

    def save(model, out):
        save_model(model, out)
        (out / COH_FILE).write_text(json.dumps({"positive": cfg.positive, "negative": cfg.negative}))

    pack = None
    if cfg.attention_drop > 0:  # the random attention mask is applied to a batch of one sequence per row
        if cfg.packing:
            say("packing off: --attention-drop needs padded batches")
    elif use_packing(cfg, model):
        pack = cfg.pack_tokens
    return Task("coh", model, train_items, eval_items, make_collate(tok.pad_token_id, pack, cfg.varlen), make_coh_step(cfg), save,
                info)


def run_coh(cfg: CoHConfig) -> TrainResult:
    """Train `cfg.model` with Chain of Hindsight on preference pairs; saved in `cfg.output_dir`."""
    reuse_freed_memory()
    return train(build_coh(cfg), cfg)
