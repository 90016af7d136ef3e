"""Settings of `alignkit eval`: typed, loaded from YAML and flags alike, light to import (no torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignkit.judges.config import JudgeSettings
from alignkit.rollout.config import BatchSampling
from alignkit.train.config import AUTO_PRECISION


class EvalConfig(BatchSampling, JudgeSettings):
    """`alignkit eval`: policies against their reference on held-out prompts."""

    model: list[str] = Field(description="policy folders to evaluate, each DIR or NAME=DIR (NAME defaults to the "
                             "folder name)")
    reference: str = Field(description="the reference policy (KL and win rate are against it)")
    prompts: str = Field(description="held-out prompt file (records with `prompt`)")
    gold: str | None = Field(None, description="gold scorer: vader, sklearn:PATH (a joblib text classifier), "
                             "module:function or file.py:function; default: vader, or none when a judge is given")
    reward_model: str | None = Field(None, description="also score with this reward model and report its accuracy "
                                     "against gold")
    output_dir: str = Field(description="folder for results.json (and config.yaml)")
    samples: int = Field(1, gt=0, description="responses per prompt and policy")
    max_new_tokens: int = Field(48, gt=0, description="longest response in tokens")
    mixed_precision: Literal["no", "bf16", "auto"] = Field(
        "no", description="autocast precision of the scoring passes (the reference's log-probs for KL, the reward "
        f"model's scores); {AUTO_PRECISION}; the sampling stays float32")

    def gold_scorer(self) -> str | None:
        """--gold, else vader, or no gold scorer at all when a judge is given."""
        return self.gold or (None if self.judge or self.judge_url else "vader")

    def judged(self) -> bool:
        return bool(self.judge or self.judge_url)

    def policies(self) -> dict[str, str]:
        """name -> folder of each policy."""
        out = {}
        for spec in self.model:
            name, _, path = spec.rpartition("=")
            out[name or path.rstrip("/").split("/")[-1]] = path
        return out
