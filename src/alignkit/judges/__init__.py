"""Language models as annotators and judges (`alignkit judge`, `alignkit eval --judge`, the demo's judge annotator).

A judge reads a rubric with a request and two responses and answers A or B; alignkit reads the probability of
each letter, from a local model's next-token distribution (`local.LocalJudge`) or from an OpenAI-compatible
server's log-probs (`server.ServerJudge`). `verdicts.judge_pairs` shows every pair in both orders, through a disk
cache, and `verdicts.label_files` writes the records people's labels produce."""

from __future__ import annotations

import hashlib
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.judges.cache import VerdictCache
from alignkit.judges.rubrics import RUBRICS, Rubric, load_rubric
from alignkit.judges.verdicts import (
    Judgments,
    Verdict,
    agreement,
    judge_pairs,
    label_files,
    rank_sets,
    set_pairs,
)

__all__ = ["RUBRICS", "check_judge", "Judgments", "Rubric", "Verdict", "VerdictCache", "agreement", "judge_pairs", "label_files",
           "judge_name", "load_rubric", "make_judge", "open_cache", "parse_judge_spec", "rank_sets", "set_pairs"]


def parse_judge_spec(spec: str) -> tuple[str, str | None]:
    """`MODEL` (a local judge) or `MODEL@URL` (MODEL served at an OpenAI-compatible URL) -> (model, url)."""
    model, sep, url = spec.partition("@")
    if not model.strip() or (sep and not url.strip()):
        raise AlignkitError(f"judge '{spec}': give MODEL (a local model) or MODEL@URL (a model an OpenAI-compatible "
                            "server serves, e.g. smollm2@http://127.0.0.1:8000/v1)")
    return model.strip(), url.strip() or None


def check_judge(settings) -> list[Rubric]:
    """Refuse judge settings that cannot work, before anything is loaded or sampled; returns the rubrics."""
    if settings.judge_url:
        if not settings.judge_model:
            raise AlignkitError("--judge-url needs --judge-model, the name of the model the server serves")
        if settings.judge:
            raise AlignkitError("give --judge (a local model) or --judge-url with --judge-model, not both")
        if not settings.judge_url.startswith(("http://", "https://")):
            raise AlignkitError(f"--judge-url '{settings.judge_url}' is not an http(s) URL")
    elif settings.judge_model:
        raise AlignkitError("--judge-model names a server's model: give --judge-url too (or --judge for a local model)")
    elif not settings.judge:
        raise AlignkitError("no judge given: --judge MODEL (a local model), or --judge-url URL --judge-model NAME")
    rubrics = [load_rubric(r.strip(), settings.criterion) for r in settings.rubric.split(",") if r.strip()]
    if not rubrics:
        raise AlignkitError("--rubric names no rubric")
    if not settings.judge_url:
        from alignkit.models.names import check_model

        check_model(settings.judge)
    return rubrics


def make_judge(settings):
    """The judge that `settings` (`config.JudgeSettings`, checked by `check_judge`) names: --judge-model at
    --judge-url, or the local model --judge."""
    if settings.judge_url:
        from alignkit.judges.server import ServerJudge

        return ServerJudge(settings.judge_url, settings.judge_model, concurrency=settings.judge_concurrency,
                           timeout=settings.judge_timeout, retries=settings.judge_retries)
    from alignkit.judges.local import LocalJudge

    return LocalJudge(settings.judge, max_length=settings.judge_max_length)


def judge_name(settings) -> str:
    """The judge as a person reads it: the local model, or MODEL@URL."""
    return f"{settings.judge_model}@{settings.judge_url}" if settings.judge_url else str(settings.judge)


def open_cache(settings, judge) -> VerdictCache:
    """The verdict cache of `judge`: --judge-cache, or a file per judge under $ALIGNKIT_CACHE/judgments."""
    if settings.judge_cache:
        return VerdictCache(settings.judge_cache)
    from alignkit.models.names import cache_dir

    name = hashlib.blake2b(judge.id.encode(), digest_size=8).hexdigest()
    return VerdictCache(Path(cache_dir()) / "judgments" / f"{name}.jsonl")
