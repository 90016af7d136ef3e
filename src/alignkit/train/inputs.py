"""What a run reads before any model library is imported: its data files, read and validated once, and its
model names and lengths. Light (no torch, no transformers), so bad input is refused at once.

`alignkit.train`'s entry points (`run_dpo` and the others) call `preflight(cfg)` before they import their
trainer; the trainer's `load_inputs(cfg)` then takes the records preflight read, so no file is read twice."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from functools import partial
from pathlib import Path

from alignkit.console import say
from alignkit.data.records import LoadReport
from alignkit.errors import AlignkitError
from alignkit.models.names import BUILTIN_MODELS, builtin_folder, check_cache, check_context, check_model
from alignkit.train.checkpoints import resume_checkpoint
from alignkit.train.config import REFERENCE_FREE, RLConfig, RunConfig

_read_ahead: dict[tuple, tuple[list, list, dict]] = {}  # preflight's records, taken by the run of the same config


def preflight(cfg: RunConfig) -> None:
    """Refuse a run whose models or data are bad, before any model is loaded: every model name is checked
    (`check_model`), sequence lengths against the models' contexts, and the data files are read and validated
    (the run then reuses them). Also refused: an output folder that is, holds or lies in a model folder, a
    reference cache that cannot be written, a --resume whose checkpoints are all damaged, and a sampling backend
    that cannot run here."""
    if hasattr(cfg, "backend"):
        from alignkit.rollout.backends import check_backend

        check_backend(cfg.backend)
    for name in _model_names(cfg):
        check_model(name)
    _check_output_dir(cfg)
    if getattr(cfg, "reference", None) == "precomputed" and getattr(cfg, "loss", None) not in REFERENCE_FREE:
        # reference log-probs are cached
        check_cache()
    if cfg.resume:
        resume_checkpoint(cfg.output_dir)
    _check_lengths(cfg)
    key = _key(cfg)
    if key not in _read_ahead:  # checked already (the CLI checks before it sets up the model libraries)
        _read_ahead.clear()
        _read_ahead[key] = _read(cfg)
        _check_data_use(cfg, _read_ahead[key][0])


def _same_file(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.samefile(pb) if pa.exists() and pb.exists() else a == b


def _check_data_use(cfg: RunConfig, records: list) -> None:
    """Data that is valid but would mislead the run: held-out data that is the training file (warned), and
    pairs that all carry no preference (label 0.5) under a loss that ignores labels (refused)."""
    for train, held in (("data", "eval_data"), ("prompts", "eval_prompts")):
        a, b = getattr(cfg, train, None), getattr(cfg, held, None)
        if a and b and _same_file(a, b):
            say(f"warning: --{held.replace('_', '-')} is the same file as --{train}: the held-out metrics will be "
                "measured on the training data")
    loss = getattr(cfg, "loss", None)
    soft = loss in ("gdpo", "gipo") or (loss == "cdpo" and cfg.label_smoothing == 0)  # as train/preference.py
    if loss is None or soft:
        return
    if records and all(getattr(r, "label", None) == 0.5 for r in records):
        raise AlignkitError(f"every training pair in '{cfg.data}' has label 0.5: the pairs carry no preference, "
                            f"and --loss {loss} ignores labels, so it would learn to prefer whichever response is "
                            "written as chosen; train on pairs with a preference (label above 0.5)")


def load_inputs(cfg: RunConfig) -> tuple[list, list, dict]:
    """(training records, held-out records, data info for run_info.json) of a run: what `preflight` read for
    this very config and these files, else read now."""
    found = _read_ahead.pop(_key(cfg), None)
    return found if found is not None else _read(cfg)


def is_rankings(cfg) -> bool:
    """Whether a reward model's data are rankings (`--data-format rankings`, or auto and the first record has
    `responses` and no `chosen`)."""
    if cfg.data_format != "auto":
        return cfg.data_format == "rankings"
    from alignkit.data import iter_raw

    for _, rec in iter_raw(cfg.data):
        return "responses" in rec and "chosen" not in rec
    return False


def load_split(cfg, load: Callable[..., tuple[list, LoadReport]], data: str, eval_data: str | None) -> tuple[list, list, dict]:
    """Training and held-out records: `eval_data`, or a seeded `cfg.eval_fraction` of `data`."""
    records, report = load(data, skip_invalid=cfg.skip_invalid)
    say(report.summary())
    info = {"train_data": vars(report)}
    if eval_data:
        held, eval_report = load(eval_data, skip_invalid=cfg.skip_invalid)
        say(eval_report.summary())
        info["eval_data"] = vars(eval_report)
        return records, held, info
    if cfg.eval_fraction <= 0 or len(records) < 2:
        return records, [], info
    order = list(range(len(records)))
    random.Random(cfg.seed).shuffle(order)
    n_eval = max(1, round(cfg.eval_fraction * len(records)))
    keys = [_prompt_key(r, i) for i, r in enumerate(records)]
    by_prompt: dict[str, list[int]] = {}
    for i in order:
        by_prompt.setdefault(keys[i], []).append(i)
    held: list[int] = []
    taken: set[int] = set()
    for i in order:  # whole prompts, in shuffled order, until the held-out share is reached
        if len(held) >= n_eval:
            break
        if i not in taken:
            group = by_prompt[keys[i]]
            held += group
            taken.update(group)
    if len(held) == len(records):  # a single prompt: no split by prompt possible
        held = order[:n_eval]
        taken = set(held)
    return [records[i] for i in order if i not in taken], [records[i] for i in held], info


def _prompt_key(record, index: int) -> str:
    """Records of one prompt go to the same side of the split, so that no held-out response shares its prompt with
    training (several pairs or rankings of one prompt); a record without a prompt is its own group."""
    prompt = getattr(record, "prompt", None)
    return f"#{index}" if prompt is None else json.dumps(prompt, sort_keys=True)


def _read(cfg: RunConfig) -> tuple[list, list, dict]:
    from alignkit.data import load_kto, load_pairs, load_prompts, load_rankings, load_sft

    kind = cfg.inputs
    if kind == "prompts":
        return load_split(cfg, load_prompts, cfg.prompts, cfg.eval_prompts)
    if kind == "sft":
        return load_split(cfg, load_sft, cfg.data, cfg.eval_data)
    if kind == "pairs-or-rankings" and is_rankings(cfg):
        return load_split(cfg, load_rankings, cfg.data, cfg.eval_data)
    if kind == "kto":
        return load_split(cfg, partial(load_kto, format=cfg.data_format), cfg.data, cfg.eval_data)

    def pairs(source, skip_invalid):
        return load_pairs(source, format=cfg.data_format, skip_invalid=skip_invalid)

    return load_split(cfg, pairs, cfg.data, cfg.eval_data)


def _key(cfg: RunConfig) -> tuple:
    """The config and the size and time of every data file it names: a file changed in between is read again."""
    files = []
    for field in ("data", "eval_data", "prompts", "eval_prompts"):
        value = getattr(cfg, field, None)
        path = Path(value).expanduser() if isinstance(value, str) else None
        if path is not None and path.is_file():
            st = path.stat()
            files.append((field, str(path.resolve()), st.st_size, st.st_mtime_ns))
    return type(cfg).__name__, cfg.model_dump_json(), tuple(files)


_MODEL_FIELDS = ("model", "reference_model", "reward_model", "value_model")


def _model_names(cfg: RunConfig) -> list[str]:
    return [value for field in _MODEL_FIELDS if (value := getattr(cfg, field, None))]


def _check_output_dir(cfg: RunConfig) -> None:
    """The run writes its model, checkpoints and metrics into --output-dir: refuse one that is a model folder the
    run reads, lies inside one, or holds one, rather than overwrite the model it starts from."""
    out = Path(cfg.output_dir).expanduser().resolve()
    for field in _MODEL_FIELDS:
        name = getattr(cfg, field, None)
        if not name:
            continue
        folder = builtin_folder(name) if name in BUILTIN_MODELS else Path(name).expanduser()
        if not folder.is_dir():
            continue  # a hub id, or a built-in model not converted yet
        folder = folder.resolve()
        flag = "--" + field.replace("_", "-")
        where = ("is" if out == folder else "is inside" if folder in out.parents
                 else "contains" if out in folder.parents else None)
        if where:
            raise AlignkitError(f"--output-dir '{cfg.output_dir}' {where} the {flag} folder '{name}'; choose an "
                                "output folder apart from the models the run reads")


def _check_lengths(cfg: RunConfig) -> None:
    """Sequence lengths that do not fit in a model's context: one clear error, instead of an index error deep
    inside the model (or silent use of untrained positions)."""
    if isinstance(cfg, RLConfig):
        sampled = cfg.max_prompt_length + cfg.max_new_tokens
        what = f"--max-prompt-length {cfg.max_prompt_length} + --max-new-tokens {cfg.max_new_tokens} = {sampled}"
        for name in (cfg.model, getattr(cfg, "value_model", None)):
            if name:
                check_context(name, sampled, what)
        if cfg.reward_model:
            check_context(cfg.reward_model, cfg.max_length, f"--max-length {cfg.max_length}")
        return
    for name in (cfg.model, getattr(cfg, "reference_model", None)):
        if name:
            check_context(name, cfg.max_length, f"--max-length {cfg.max_length}")
