"""Settings of the commands that sample (`alignkit sample`, `alignkit chat`, and the sampling part of `alignkit eval`):
typed, loaded from YAML and flags alike (`train.config.load_config`), and light to import (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


@dataclass
class SampleSettings:
    """How policies are sampled (by `sample_policy`, and for evaluation)."""

    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    samples: int = 1  # responses per prompt and policy
    batch_size: int = 16
    max_prompt_length: int = 256
    chat_template: bool = False
    seed: int = 0
    backend: str = "hf"  # `rollout.backends.BACKENDS`


class SamplingOptions(BaseModel):
    """What `alignkit sample`, `alignkit eval` and `alignkit chat` share: how a policy is sampled."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(64, gt=0, description="longest response in tokens")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    seed: int = Field(0, description="sampling seed")
    backend: Literal["hf", "vllm"] = Field("hf", description='sampling engine: hf (any machine) or vllm (a CUDA '
                                           'GPU; pip install "alignkit[vllm]")')


class BatchSampling(SamplingOptions):
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling threshold (1.0: off)")
    batch_size: int = Field(16, gt=0, description="sequences sampled at once")
    max_prompts: int | None = Field(None, gt=0, description="use only the first N prompts")
    chat_template: bool = Field(False, description="wrap plain-string prompts as a user message and apply the chat "
                                "template")

    def settings(self, samples: int) -> SampleSettings:
        return SampleSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                              samples=samples, batch_size=self.batch_size, chat_template=self.chat_template,
                              seed=self.seed, backend=self.backend)


class SampleConfig(BatchSampling):
    """`alignkit sample`: K responses per prompt from a policy."""

    model: str = Field(description="the policy: a folder, hub id or built-in name")
    prompts: str = Field(description="prompt file (records with `prompt`, a string or messages)")
    k: int = Field(2, ge=2, description="responses per prompt")
    output: str = Field(description="JSON-lines file to write (its settings go beside it, as .config.yaml)")
    skip_invalid: bool = Field(False, description="skip invalid prompt records (counted) instead of stopping")


class ChatConfig(SamplingOptions):
    """`alignkit chat`: talk to a policy, optionally beside a second model."""

    model: str = Field(description="the policy folder (or hub id / built-in name)")
    compare: str | None = Field(None, description="a second model to answer beside it (e.g. the reference)")
    max_new_tokens: int = Field(128, gt=0, description="longest answer in tokens")
    temperature: float = Field(0.7, gt=0, description="sampling temperature")
    greedy: bool = Field(False, description="always pick the most likely token")
