"""Settings of a judge (`alignkit judge`, `alignkit eval --judge`, the demo's judge annotator): typed, loaded from
YAML and flags alike, light to import (no torch)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class JudgeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    judge: str | None = Field(None, description="a local judge: a causal LM folder, hub id or built-in name "
                              "(smollm2-135m-instruct)")
    judge_url: str | None = Field(None, description="an OpenAI-compatible server to judge with, e.g. "
                                  "http://127.0.0.1:8000/v1 (the API key comes from OPENAI_API_KEY)")
    judge_model: str | None = Field(None, description="the model the --judge-url server is asked for")
    rubric: str = Field("helpful", description="rubric(s), comma-separated: helpful, harmless, criterion, or a "
                        "template file with {prompt}, {a} and {b}; several rubrics count as several annotators")
    criterion: str | None = Field(None, description="the criterion of the criterion rubric (e.g. 'more positive')")
    judge_concurrency: int = Field(4, gt=0, description="requests in flight at once to a judge server")
    judge_timeout: float = Field(60.0, gt=0, description="seconds a judge server may take per request")
    judge_retries: int = Field(3, ge=0, description="retries of a failed request (with exponential backoff)")
    judge_cache: str | None = Field(None, description="verdict cache file (default: one per judge under "
                                    "$ALIGNKIT_CACHE/judgments)")
    judge_max_length: int = Field(1024, gt=8, description="longest judge input in tokens (a local judge; longer "
                                  "inputs keep their end and are counted)")


class JudgeConfig(JudgeSettings):
    """`alignkit judge`: label pairs or K-response sets with a language model as the judge."""

    data: str = Field(description="K-response sets ({prompt, responses}, as `alignkit sample` writes) or preference "
                      "pairs in any format (their labels are then compared with the judge's)")
    data_format: str = Field("auto", description="record format: auto, sets, pairs, hh, alpaca_eval, votes")
    output_dir: str = Field(description="folder for votes.jsonl, soft_pairs.jsonl, pairs.jsonl (and rankings.jsonl)")
    max_records: int | None = Field(None, gt=0, description="judge only the first N records")
    skip_invalid: bool = Field(False, description="skip invalid records (counted) instead of stopping")
    progress: bool = Field(True, description="show a progress bar")
