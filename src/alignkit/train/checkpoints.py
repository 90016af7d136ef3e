"""Finding and checking the checkpoints of a run (`checkpoint-N` folders in --output-dir) before `--resume` uses
one. Light (no torch), so `preflight` can refuse a run whose checkpoints are all damaged before loading a model."""

from __future__ import annotations

import json
import re
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.models.names import weights_damage

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete checkpoints in `output_dir`, newest first (a half-written `.tmp` folder or one without
    `trainer_state.json` is ignored)."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    done = [(int(m.group(1)), p) for p in out.iterdir()
            if (m := CHECKPOINT_NAME.match(p.name)) and (p / "trainer_state.json").exists()]
    return [p for _, p in sorted(done, reverse=True)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, damaged or not."""
    found = checkpoints(output_dir)
    return found[0] if found else None


def damage(ckpt: Path) -> str | None:
    """What is wrong with checkpoint `ckpt`, as "<file>: <why>" for the first damaged file, or None when every
    file resume reads is whole: trainer_state.json (a JSON object with a whole-number step, epoch and position),
    the safetensors files (header and size) and the torch files (a complete zip archive) of `state/`."""
    path = ckpt / "trainer_state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"{path}: not valid JSON ({e})"
    if not isinstance(state, dict):
        return f"{path}: holds {type(state).__name__}, not a JSON object"
    for key in ("step", "epoch", "micro_in_epoch"):
        value = state.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            got = "missing" if value is None else f"{value!r}"
            return f"{path}: '{key}' must be a whole number >= 0, got {got}"
    if state["step"] != int(CHECKPOINT_NAME.match(ckpt.name).group(1)):
        return f"{path}: step {state['step']} does not match the folder name"
    if not isinstance(state.get("task_state", {}), dict):
        return f"{path}: 'task_state' must be a JSON object"
    files = sorted(p for p in (ckpt / "state").glob("*") if p.is_file())
    if not files:
        return f"{ckpt / 'state'}: missing or empty"
    for p in files:
        if why := weights_damage(p):
            return f"{p}: {why}"
    return None


def resume_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[str]]:
    """(the newest intact checkpoint or None when there is none at all, what is wrong with each newer damaged
    one). Raises AlignkitError when there are checkpoints but none is intact, naming the newest one's damage."""
    found = checkpoints(output_dir)
    damaged = []
    for ckpt in found:
        why = damage(ckpt)
        if why is None:
            return ckpt, damaged
        damaged.append(why)
    if damaged:
        older = len(damaged) - 1
        tail = "there is no older one" if not older else f"the {older} older one{'s are' if older > 1 else ' is'} damaged too"
        raise AlignkitError(f"cannot resume: damaged checkpoint: {damaged[0]}; {tail}: run without --resume to start over")
    return None, []
