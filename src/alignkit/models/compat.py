"""The transformers versions alignkit's hand-written paths were tested with.

The packed forwards (a 4D block mask, or flat varlen attention), the last-layer read-out, the hand-written decode
step and the reserved KV cache reach into transformers' internals: module attribute names, the cache classes, how
a custom attention mask is taken. They run only when the installed transformers is inside `TESTED`; outside it
they switch off with one warning line, and the plain path (the model's own forward, padded batches, the model's
own cache) runs instead: slower, and otherwise the same up to float rounding. They are also off for a model on a GPU
(`off_device`)."""

from __future__ import annotations

import functools

from alignkit.console import say

TESTED = ("5.4.0", "5.25.0")  # [lowest, first untested) transformers release for the hand-written paths


@functools.cache
def fast_paths() -> bool:
    """Whether the installed transformers is one the hand-written paths were tested with (says so once if not)."""
    import transformers
    from packaging.version import Version

    installed = Version(transformers.__version__)
    if Version(TESTED[0]) <= installed < Version(TESTED[1]):
        return True
    say(f"warning: transformers {installed} is outside the range alignkit's fast paths were tested with "
        f"({TESTED[0]} to before {TESTED[1]}): they are off and the plain, slower path runs")
    return False


def untested() -> str | None:
    """A reason to refuse a hand-written path (for the callers that report one), or None."""
    if fast_paths():
        return None
    import transformers

    return f"transformers {transformers.__version__} is outside the tested range"


def off_device(model) -> str | None:
    """Why the hand-written paths (`varlen`, `readout`, `decode`) stay off for `model`, a model on a GPU or another
    accelerator: there the libraries' own kernels run (SDPA or FlashAttention under the block mask, the model's
    own forward and cache), as the hand-written paths were measured on CPUs only; None on the CPU."""
    param = next(iter(model.parameters()), None)
    if param is None or param.device.type == "cpu":
        return None
    return f"on {param.device.type}: the library's own kernels run there"


def cache_keyword(model) -> str:
    """The keyword `model`'s forward takes its KV cache under: `cache` in transformers from 5.24 on (where
    `past_key_values` still works but warns), `past_key_values` before. Read from the forward's signature; a
    wrapper whose forward takes only `**kwargs` gets the keyword of the installed release."""
    from alignkit.models.load import unwrap

    return _forward_keyword(type(unwrap(model)))


@functools.cache
def _forward_keyword(cls: type) -> str:
    import inspect

    import transformers
    from packaging.version import Version

    try:
        params = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        params = {}
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return "cache" if Version(transformers.__version__) >= Version("5.24.0.dev0") else "past_key_values"


def output_cache(out):
    """The KV cache a forward returned (`cache` from transformers 5.24 on, `past_key_values` before)."""
    cache = out.get("cache")
    return cache if cache is not None else out.get("past_key_values")
