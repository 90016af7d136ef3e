"""KTO: unpaired desirable and undesirable responses, each pulled above or pushed below a KL reference point
(docs/algorithms.md, KTO; `losses.kto_loss`).

Each example is encoded as a pair, so that the DPO family's reference machinery serves it unchanged (the
reference log-probs precomputed and cached, or a live reference): its completion in the `chosen` slot, and in the
`rejected` slot the completion of another example of the data under this example's prompt. The policy's and the
reference's log-probs of those mismatched pairs estimate KL(π‖π_ref) over the batch, the reference point z. A
training batch holds the completions (with gradient) and, as `kl_batch`, the mismatched pairs (scored without
gradient: z carries none), each packed with every prompt laid out once."""

from __future__ import annotations

import json
import random
from functools import partial

import torch

from alignkit.console import say
from alignkit.data.collate import pack_responses
from alignkit.data.records import KTOExample, PreferencePair
from alignkit.losses import kto_loss
from alignkit.models.logprobs import score
from alignkit.train.common import (
    encode_all,
    make_encoder,
    policy_and_tokenizer,
    reuse_freed_memory,
    saver,
)
from alignkit.train.config import KTOConfig
from alignkit.train.inputs import load_inputs
from alignkit.train.loop import Task, TrainResult, train
from alignkit.train.preference import reference_logprobs, setup_reference

PARTNER_SEARCH = 64  # examples looked at for a KL partner with another prompt


def kto_weights(desirable: int, undesirable: int, desirable_weight: float | None = None,
                undesirable_weight: float | None = None) -> tuple[float, float]:
    """(λ_D, λ_U). Weights given are kept. A weight not given is 1, unless λ_D·n_D / λ_U·n_U would then fall
    outside [1, 4/3], the range the KTO paper recommends (Ethayarajh et al. 2024, section 4.2): the weight not
    given (λ_D first) is then set so that the ratio is 1, which weighs the two kinds of example equally."""
    lam_d = desirable_weight or 1.0
    lam_u = undesirable_weight or 1.0
    if desirable and undesirable and not 1.0 <= lam_d * desirable / (lam_u * undesirable) <= 4 / 3:
        if desirable_weight is None:
            lam_d = lam_u * undesirable / desirable
        elif undesirable_weight is None:
            lam_u = lam_d * desirable / undesirable
    return lam_d, lam_u


def with_kl_partners(examples: list[KTOExample], seed: int) -> list[PreferencePair]:
    """Each example as a pair (its completion, the completion of another example under its prompt): the partner
    is the next example, in a seeded order, whose prompt differs and is of the same form (text or messages); the
    example's own completion when none is found."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    keys = [json.dumps(e.prompt) for e in examples]
    pairs: list[PreferencePair | None] = [None] * len(examples)
    for pos, i in enumerate(order):
        partner = i
        for step in range(1, min(PARTNER_SEARCH, len(order))):
            j = order[(pos + step) % len(order)]
            if keys[j] != keys[i] and isinstance(examples[j].prompt, str) == isinstance(examples[i].prompt, str):
                partner = j
                break
        e = examples[i]
        pairs[i] = PreferencePair(e.prompt, e.completion, examples[partner].completion, where=e.where)
    return pairs


def encode_kto(examples: list[KTOExample], enc, seed: int, desc: str, progress: bool) -> list[dict]:
    items = encode_all(with_kl_partners(examples, seed), enc.encode_pair, desc, progress)
    for it, e in zip(items, examples, strict=True):
        it["desirable"] = e.desirable
    return items


def kto_logprobs(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the completions and of the mismatched KL pairs of a KTO batch."""
    return score(model, batch).logp, score(model, batch["kl_batch"]).logp


def collate_kto(items: list[dict], pad_id: int, packed: bool, varlen: bool) -> dict:
    """The completions (sequence i is item i's), and as `kl_batch` the mismatched pairs, each a `pack_responses`
    batch; the labels and any precomputed reference log-probs."""
    prompts = [it["prompt"] for it in items]

    def part(side):
        return pack_responses(prompts, [it[side] for it in items], pad_id, varlen=varlen, one_per_row=not packed)

    batch = {**part("chosen"), "kl_batch": part("rejected"),
             "desirable": torch.tensor([it["desirable"] for it in items])}
    if "ref_chosen" in items[0]:
        for key in ("ref_chosen", "ref_rejected"):
            batch[key] = torch.tensor([it[key] for it in items], dtype=torch.float32)
    return batch


def make_kto_step(cfg: KTOConfig, weights: tuple[float, float], reference=None):
    """The step: log-probs of the completions (with gradient) and of the mismatched KL pairs (without), the
    reference's, the loss. z is the batch mean of the mismatched pairs' log-ratio, clamped at 0 by the loss."""
    lam_d, lam_u = weights

    def step(model, batch):
        logp = score(model, batch).logp
        with torch.no_grad():
            kl_logp = score(model, batch["kl_batch"]).logp
        ref, kl_ref = reference_logprobs(model, batch, reference, kto_logprobs)
        kl = (kl_logp.float() - kl_ref.float()).mean()
        loss, stats = kto_loss(logp, ref, batch["desirable"], kl, beta=cfg.beta, desirable_weight=lam_d,
                               undesirable_weight=lam_u)
        return loss, {**stats, "logp": logp.detach().mean()}

    return step


def build_kto(cfg: KTOConfig) -> Task:
    train_recs, eval_recs, info = load_inputs(cfg)
    n_d = sum(e.desirable for e in train_recs)
    n_u = len(train_recs) - n_d
    lam_d, lam_u = kto_weights(n_d, n_u, cfg.desirable_weight, cfg.undesirable_weight)
    ratio = lam_d * n_d / (lam_u * n_u) if n_u else float("inf")
    say(f"KTO: {n_d} desirable, {n_u} undesirable training examples; weights λ_D {lam_d:.3g}, λ_U {lam_u:.3g} "
        f"(λ_D·n_D / λ_U·n_U = {ratio:.3g})")
    if not n_d or not n_u:
        say(f"warning: no {'desirable' if not n_d else 'undesirable'} training examples: KTO will only "
            f"{'push responses down' if not n_d else 'pull responses up'}")
    info["kto"] = {"desirable": n_d, "undesirable": n_u, "desirable_weight": lam_d, "undesirable_weight": lam_u}

    model, tok = policy_and_tokenizer(cfg)
    enc = make_encoder(cfg, tok)
    train_items = encode_kto(train_recs, enc, cfg.seed, "train", cfg.progress)
    eval_items = encode_kto(eval_recs, enc, cfg.seed, "eval", cfg.progress)
    info["truncation"] = dict(enc.counts)
    reference, _, packed = setup_reference(cfg, model, tok, train_items + eval_items, info)
    collate = partial(collate_kto, pad_id=tok.pad_token_id, packed=packed, varlen=cfg.varlen)
    step = make_kto_step(cfg, (lam_d, lam_u), reference)
    return Task("kto", model, train_items, eval_items, collate, step, saver(tok), info)


def run_kto(cfg: KTOConfig) -> TrainResult:
    """KTO-train `cfg.model` on unpaired desirable/undesirable examples; saved in `cfg.output_dir`."""
    reuse_freed_memory()
    return train(build_kto(cfg), cfg)
