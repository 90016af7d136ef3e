"""The rollout layer: batched sampling with a KV cache (swappable backend) and reward sources."""

from alignkit.rollout.engine import Backend, HFBackend, Rollout, SamplingParams

__all__ = ["Backend", "HFBackend", "Rollout", "SamplingParams"]
