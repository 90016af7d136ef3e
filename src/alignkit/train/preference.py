"""DPO and its family (cdpo, ipo, hinge, gdpo, gipo): one step function, the loss picked by name; and the
reference-free SimPO and ORPO (`make_reference_free_step`), which load and compute no reference.

The reference is one of three (DPOConfig.reference):
- "precomputed" (default): reference log-probs of every pair computed once, in inference mode, before training,
  and cached on disk keyed by the reference weights and the tokenised data, so later runs reuse them;
- "copy": a frozen copy of the reference, run live each step;
- "lora-disabled": the policy's own base with its LoRA adapter switched off (no second model in memory).
"""

from __future__ import annotations

import copy
import hashlib
import json
from contextlib import nullcontext
from functools import partial

import torch
from accelerate.utils import send_to_device

from alignkit.console import say
from alignkit.data.collate import collate_pairs, pack_pairs
from alignkit.losses import (
    implicit_accuracy,
    implicit_rewards,
    mean_logp,
    orpo_loss,
    preference_loss,
    simpo_loss,
)
from alignkit.models.load import autocast, load_causal_lm, resolve_precision
from alignkit.models.logprobs import score
from alignkit.models.names import cache_dir
from alignkit.train.common import (
    encode_all,
    make_encoder,
    policy_and_tokenizer,
    reuse_freed_memory,
    saver,
    use_packing,
)
from alignkit.train.config import REFERENCE_FREE, DPOConfig, ReferenceConfig
from alignkit.train.inputs import load_inputs
from alignkit.train.loop import Task, TrainResult, train


def pair_logprobs(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response log-probs of the chosen and the rejected responses (one forward pass for both; packed
    batches may lay the prompt out once for both)."""
    logps = score(model, batch).logp
    b = logps.shape[0] // 2
    return logps[:b], logps[b:]


def reference_logprobs(model, batch, reference, logprobs=pair_logprobs) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's log-probs of both halves of a pair batch (`logprobs(model, batch)` gives them):
    precomputed ones carried in the batch, else a live pass of the frozen `reference`, or (None) of the policy
    with its LoRA adapter off."""
    if "ref_chosen" in batch:
        return batch["ref_chosen"], batch["ref_rejected"]
    with torch.no_grad():
        if reference is None:  # lora-disabled
            with model.disable_adapter():
                return logprobs(model, batch)
        device = next(model.parameters()).device
        if next(reference.parameters()).device != device:
            reference.to(device)
        return logprobs(reference, batch)


def make_reference_free_step(cfg: DPOConfig):
    """SimPO or ORPO: the loss from the policy's log-probs and response lengths alone (`losses.simpo_loss`,
    `losses.orpo_loss`); the accuracy is that of the length-normalised log-likelihoods."""

    def step(model, batch):
        s = score(model, batch)
        b = s.logp.shape[0] // 2
        pc, pr, nc, nr = s.logp[:b], s.logp[b:], s.counts[:b], s.counts[b:]
        metrics = {"logp_chosen": pc.detach().mean(), "logp_rejected": pr.detach().mean()}
        if cfg.loss == "simpo":
            loss = simpo_loss(pc, pr, nc, nr, beta=cfg.beta, gamma=cfg.simpo_gamma).mean()
        else:
            ratio, sft = orpo_loss(pc, pr, nc, nr, weight=cfg.orpo_weight)
            loss = (sft + ratio).mean()
            metrics.update(odds_ratio_loss=ratio.detach().mean(), sft_loss=sft.detach().mean())
        margin = (mean_logp(pc, nc) - mean_logp(pr, nr)).detach()
        return loss, {**metrics, "accuracy": (margin > 0).float().mean(), "margin": margin.mean()}

    return step


def make_dpo_step(cfg: DPOConfig, reference=None):
    """The step: policy log-probs, reference log-probs (batch, frozen model, or adapter off), the loss."""
    soft = cfg.loss in ("gdpo", "gipo") or (cfg.loss == "cdpo" and cfg.label_smoothing == 0)

    def step(model, batch):
        pc, pr = pair_logprobs(model, batch)
        rc, rr = reference_logprobs(model, batch, reference)
        if cfg.ipo_average and cfg.loss in ("ipo", "gipo"):
            n = batch["response_tokens"].clamp(min=1).float()
            b = pc.shape[0]
            pc, pr, rc, rr = pc / n[:b], pr / n[b:], rc / n[:b], rr / n[b:]
        losses = preference_loss(cfg.loss, pc, pr, rc, rr, beta=cfg.beta, label=batch["label"] if soft else None,
                                 epsilon=cfg.label_smoothing)
        chosen_r = implicit_rewards(pc, rc, cfg.beta)
        rejected_r = implicit_rewards(pr, rr, cfg.beta)
        return losses.mean(), {
            "accuracy": implicit_accuracy(pc, pr, rc, rr).mean(),
            "reward_chosen": chosen_r.mean(),
            "reward_rejected": rejected_r.mean(),
            "margin": (chosen_r - rejected_r).mean(),
            "logp_chosen": pc.detach().mean(),
            "logp_rejected": pr.detach().mean(),
        }

    return step


def _fingerprint(model, items: list[dict], precision: str = "no") -> str:
    """Key for the reference cache: every weight of the reference, every token of the data, and the precision the
    log-probs were computed in."""
    h = hashlib.blake2b(digest_size=16)
    if precision != "no":  # float32 keys stay those of the caches written before precisions were told apart
        h.update(precision.encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    for it in items:
        h.update(json.dumps([it["prompt"], it["chosen"], it["rejected"]]).encode())
    return h.hexdigest()


def precompute_reference(reference, items: list[dict], collate, batch_size: int, *, progress: bool = True,
                         adapter_off: bool = False, cache: bool = True, mixed_precision: str = "no") -> str:
    """Fill `ref_chosen` / `ref_rejected` of every item (batches made by `collate`, packed or padded), from the
    disk cache when the same reference, data and precision were seen before. Returns "cache" or "computed".
    `mixed_precision` is the run's: the policy's log-probs are computed under that autocast, so the reference's
    are too (in bf16 a response's summed log-prob moves by tenths of a nat; computed alike, the two are equal before
    the first update)."""
    from tqdm.auto import tqdm

    if not items:
        return "computed"
    ctx = reference.disable_adapter if adapter_off else nullcontext
    precision = resolve_precision(mixed_precision)
    path = None
    if cache:
        with ctx():
            key = _fingerprint(reference, items, precision)
        path = cache_dir() / "reference" / f"{key}.pt"
        if path.exists():
            saved = torch.load(path)
            for it, c, r in zip(items, saved["chosen"].tolist(), saved["rejected"].tolist(), strict=True):
                it["ref_chosen"], it["ref_rejected"] = c, r
            return "cache"
    from accelerate import PartialState
    from accelerate.utils import gather_object

    was_training = reference.training
    reference.eval()
    state = PartialState()  # several processes: each computes every world-th batch, then all share the results
    starts = list(range(0, len(items), batch_size))[state.process_index :: state.num_processes]
    done: list[tuple[int, float, float]] = []
    dev = next(reference.parameters()).device
    with torch.inference_mode(), ctx(), autocast(precision):
        for i in tqdm(starts, desc="reference log-probs", leave=False, disable=not (progress and state.is_main_process)):
            batch = collate(items[i : i + batch_size])
            batch = send_to_device(batch, dev)
            c, r = pair_logprobs(reference, batch)
            done += zip(range(i, i + len(c)), c.float().tolist(), r.float().tolist(), strict=True)
    reference.train(was_training)
    if state.num_processes > 1:
        done = gather_object(done)
    done.sort()
    chosen_t = torch.tensor([c for _, c, _ in done], dtype=torch.float32)
    rejected_t = torch.tensor([r for _, _, r in done], dtype=torch.float32)
    for it, c, r in zip(items, chosen_t.tolist(), rejected_t.tolist(), strict=True):
        it["ref_chosen"], it["ref_rejected"] = c, r
    if path is not None and state.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"chosen": chosen_t, "rejected": rejected_t}, tmp)
        tmp.replace(path)
    return "computed"


def make_pair_collate(cfg: DPOConfig, tok, packed: bool):
    """Pairs packed (a shared prompt laid out once; `packed`: every model takes packed rows, `use_packing`), else
    one sequence per row."""
    if packed:
        return partial(pack_pairs, pad_id=tok.pad_token_id, pack_tokens=cfg.pack_tokens, shared_prompt=cfg.shared_prompt,
                       varlen=cfg.varlen)
    return partial(collate_pairs, pad_id=tok.pad_token_id)


def setup_reference(cfg: ReferenceConfig, model, tok, items: list[dict], info: dict):
    """(reference model or None, pair collate, whether batches are packed) of a run. The reference is `cfg.reference_model`, else the starting
    policy: a frozen copy ("copy"), the policy with its adapter off ("lora-disabled", None returned), or, by default
    ("precomputed"), its log-probs of every item computed now (or found in the cache) and carried in the batches,
    so no reference stays in memory (None returned)."""
    reference = None
    if cfg.reference_model:
        reference = load_causal_lm(cfg.reference_model, dtype=cfg.dtype)
    elif cfg.reference == "copy":
        reference = copy.deepcopy(model)
    if reference is not None:
        reference.requires_grad_(False)
        reference.eval()
    packed = use_packing(cfg, model, *([reference] if reference is not None else []))
    collate = make_pair_collate(cfg, tok, packed)
    if cfg.reference == "precomputed":
        # before the first step the policy IS the reference (with LoRA: its base, adapter off)
        source = reference if reference is not None else model
        bs = cfg.eval_batch_size or 4 * cfg.batch_size
        how = precompute_reference(source, items, collate, bs, progress=cfg.progress,
                                   adapter_off=reference is None and cfg.lora, mixed_precision=cfg.mixed_precision)
        say(f"reference log-probs: {how} for {len(items)} {'pairs' if isinstance(cfg, DPOConfig) else 'examples'}")
        info["reference_logps"] = how
        reference = None  # not needed any more: frees its memory
    return reference, collate, packed


def build_dpo(cfg: DPOConfig) -> Task:
    train_recs, eval_recs, info = load_inputs(cfg)
    model, tok = policy_and_tokenizer(cfg)
    enc = make_encoder(cfg, tok)
    train_items = encode_all(train_recs, enc.encode_pair, "train", cfg.progress)
    eval_items = encode_all(eval_recs, enc.encode_pair, "eval", cfg.progress)
    info["truncation"] = dict(enc.counts)
    info["soft_labels"] = sum(1 for it in train_items if it["label"] < 1.0)

    if cfg.loss in REFERENCE_FREE:  # no reference model, loaded or computed
        collate = make_pair_collate(cfg, tok, use_packing(cfg, model))
        return Task(f"dpo-{cfg.loss}", model, train_items, eval_items, collate, make_reference_free_step(cfg),
                    saver(tok), info)
    reference, collate, _ = setup_reference(cfg, model, tok, train_items + eval_items, info)
    step = make_dpo_step(cfg, reference)
    return Task(f"dpo-{cfg.loss}" if cfg.loss != "dpo" else "dpo", model, train_items, eval_items, collate, step,
                saver(tok), info)


def run_dpo(cfg: DPOConfig) -> TrainResult:
    """Optimise `cfg.model` on preference pairs with the loss `cfg.loss`; saved in `cfg.output_dir`."""
    reuse_freed_memory()
    return train(build_dpo(cfg), cfg)

