"""Pieces every method's setup shares: tokenising with progress, model + LoRA, packing, saving."""

from __future__ import annotations

import ctypes
import gc
import os
import platform
from collections.abc import Callable
from pathlib import Path

from alignkit.console import say
from alignkit.data.tokenize import Encoder
from alignkit.models.load import (
    apply_lora,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    save_model,
    train_top_layers,
)
from alignkit.train.config import RunConfig, TrainConfig


def process_count() -> int:
    """Processes of this run (torchrun / accelerate launch), 1 when run alone."""
    from accelerate import PartialState

    return PartialState().num_processes


def mean_over_processes(x: float) -> float:
    """The mean of a number over the processes of a distributed run (the number itself when run alone)."""
    import torch
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=state.device)
    torch.distributed.all_reduce(t)
    return float(t) / state.num_processes


def reuse_freed_memory() -> bool:
    """Have glibc keep the memory torch frees and hand it to the next tensors, instead of returning it to the
    system; whether that is now in force (Linux with glibc, and `ALIGNKIT_REUSE_MEMORY` not set to 0).

    glibc serves every allocation above 32 MB with a fresh mmap and unmaps it on free, so each large temporary
    of a training step (a chunk of LM-head logits, a tied embedding's gradient) is faulted in page by page again
    at every step, which can cost more than the arithmetic done on it. With mmap off and a 1 GB trim threshold
    such blocks come from the heap and are reused: faster steps for models with large temporaries, for some more
    peak memory (blocks of the heap freed in between are not always big enough to reuse); docs/benchmarks.md has
    the figures. Process-wide and idempotent."""
    if os.environ.get("ALIGNKIT_REUSE_MEMORY", "1") == "0" or platform.system() != "Linux" \
            or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 1 << 30) == 1


def return_freed_memory() -> None:
    """Hand the freed memory glibc keeps (`reuse_freed_memory`) back to the system, in a process that trains one
    model after another (the demo): the next run then starts from the memory in use, not from the last run's
    peak with the next one's on top where the kept blocks do not fit its tensors. Elsewhere than Linux with glibc,
    a garbage collection only."""
    gc.collect()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        ctypes.CDLL(None).malloc_trim(0)


def encode_all(records: list, fn: Callable, desc: str, progress: bool) -> list:
    from tqdm.auto import tqdm

    return [fn(r) for r in tqdm(records, desc=f"tokenising {desc}", leave=False, disable=not progress or len(records) < 2000)]


def make_encoder(cfg: TrainConfig, tokenizer) -> Encoder:
    return Encoder(tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                   chat_template=cfg.chat_template)


def policy_and_tokenizer(cfg: TrainConfig, *, reward: bool = False):
    """The model to train (causal LM, or reward model with a scalar head), LoRA-wrapped or with only its top
    blocks trainable when asked (`what_trains`). Seeds the RNGs first, so new weights (a reward or value head,
    LoRA matrices) are the same in every run of a config."""
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model)
    model = (load_reward_model if reward else load_causal_lm)(cfg.model, dtype=cfg.dtype)
    return what_trains(model, cfg, reward=reward), tokenizer


def what_trains(model, cfg: RunConfig, *, reward: bool = False):
    """`model` LoRA-wrapped (`cfg.lora`), or with only its top `cfg.train_layers` blocks trainable, or as it is."""
    if cfg.lora:
        return apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                          target=cfg.lora_target, reward_head=reward)
    if cfg.train_layers:
        train_top_layers(model, cfg.train_layers)
    return model


def use_packing(cfg: TrainConfig, *models) -> bool:
    """Whether batches are packed (`cfg.packing`, and every model that runs them computes packed rows exactly)."""
    from alignkit.models.logprobs import packing_supported

    if not cfg.packing:
        return False
    for m in models:
        if (why := packing_supported(m)) is not None:
            say(f"packing off: {why}; batches are padded instead")
            return False
    return True


def saver(tokenizer) -> Callable:
    def save(model, out: Path) -> None:
        save_model(model, tokenizer, out)

    return save
