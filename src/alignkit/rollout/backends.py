"""Choosing the sampling backend (`--backend hf|vllm`).

`hf` (`rollout.engine.HFBackend`) samples with the policy module itself and works everywhere. `vllm`
(`rollout.vllm.VLLMBackend`) samples with vLLM's offline engine on a CUDA GPU, from a copy of the policy's weights
that it refreshes whenever they changed; it is imported only when chosen (`pip install "alignkit[vllm]"`)."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from alignkit.errors import ConfigError

if TYPE_CHECKING:
    from alignkit.rollout.engine import Backend

BACKENDS = ("hf", "vllm")


def check_backend(name: str) -> None:
    """Raise a one-line `ConfigError` when backend `name` cannot run here (unknown, vLLM not installed, no GPU).
    Imports nothing heavy unless vLLM is asked for (then torch, to look for a GPU)."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    if name == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError('--backend vllm needs vLLM, which is not installed: pip install "alignkit[vllm]" '
                              "on a machine with a CUDA GPU, or use --backend hf")
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--backend vllm needs a CUDA GPU and none is visible (torch.cuda.is_available() is "
                              "False); use --backend hf")


def make_backend(name: str, model: str, *, seed: int = 0) -> Backend:
    """The backend `name` for sampling from the policy that starts as `model` (a folder, hub id or built-in name:
    vLLM loads its architecture and tokenizer from it, then takes the policy's weights)."""
    check_backend(name)
    if name == "hf":
        from alignkit.rollout.engine import HFBackend

        return HFBackend()
    from alignkit.rollout.vllm import VLLMBackend

    return VLLMBackend(model, seed=seed)
