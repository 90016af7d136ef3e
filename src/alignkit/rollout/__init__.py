"""The rollout layer: batched sampling with a KV cache behind a chosen backend (`backends`), sampling saved
policies (`sample`), and reward sources (`rewards`). Importing the package loads none of them (nor torch)."""

_ENGINE = ("Backend", "HFBackend", "Rollout", "SamplingParams")


def __getattr__(name: str):
    if name in _ENGINE:
        from alignkit.rollout import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'alignkit.rollout' has no attribute {name!r}")


__all__ = list(_ENGINE)
