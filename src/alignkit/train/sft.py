"""Supervised fine-tuning: next-token cross-entropy on response tokens only (docs/algorithms.md, SFT)."""

from __future__ import annotations

from functools import partial

from alignkit.data.collate import collate_sft, pack_sft
from alignkit.losses import sft_loss
from alignkit.models.logprobs import score
from alignkit.train.common import (
    encode_all,
    make_encoder,
    mean_over_processes,
    policy_and_tokenizer,
    reuse_freed_memory,
    saver,
    use_packing,
)
from alignkit.train.config import SFTConfig
from alignkit.train.inputs import load_inputs
from alignkit.train.loop import Task, TrainResult, train


def sft_step(model, batch):
    """Mean token cross-entropy over the batch's response tokens (`losses.sft_loss`), from log-probs whose LM
    head runs only on response positions, in chunks (`models.score`)."""
    tokens = score(model, batch).tokens
    # over several processes, divide by the mean token count: the average of the processes' losses (what their
    # averaged gradients follow) is then the token mean over the whole global batch
    return sft_loss(tokens, n_tokens=mean_over_processes(tokens.shape[0])), {}


def build_sft(cfg: SFTConfig) -> Task:
    train_recs, eval_recs, info = load_inputs(cfg)
    model, tok = policy_and_tokenizer(cfg)
    enc = make_encoder(cfg, tok)

    def item(ex):
        ids, mask = enc.encode_sft(ex)
        return {"input_ids": ids, "response_mask": mask}

    train_items = encode_all(train_recs, item, "train", cfg.progress)
    eval_items = encode_all(eval_recs, item, "eval", cfg.progress)
    info["truncation"] = dict(enc.counts)
    if use_packing(cfg, model):
        collate = partial(pack_sft, pad_id=tok.pad_token_id, pack_tokens=cfg.pack_tokens, varlen=cfg.varlen)
    else:
        collate = partial(collate_sft, pad_id=tok.pad_token_id)
    return Task("sft", model, train_items, eval_items, collate, sft_step, saver(tok), info)


def run_sft(cfg: SFTConfig) -> TrainResult:
    """Fine-tune `cfg.model` on the demonstrations in `cfg.data`; the model is saved in `cfg.output_dir`."""
    reuse_freed_memory()
    return train(build_sft(cfg), cfg)
