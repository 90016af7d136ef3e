"""Reward sources for online RL: a reward model trained by `alignkit rm`, or any Python callable.

A source is called with the prompts (strings or message lists, as in the prompt file) and the decoded
responses (EOS removed), and returns one float score per response.

- `ModelReward(path)`: scores with the reward model's own tokenizer (prompt + response + EOS, exactly as in
  `alignkit rm` training), minus the stored `alignkit_reward_offset` (mean 0 on its training responses).
  Batches are packed padding-free with each distinct prompt laid out once for all its responses
  (`rollout.engine.score_by_prompt`) where the model computes packed rows exactly; padded otherwise.
- `CallableReward("module:function")` or `"path/to/file.py:function"`: `function(prompts, responses)` returns
  a list of numbers (a gold scorer, a rule, a judge).
- Built-in names for `--reward`: "vader", the VADER sentiment compound score in [-1, 1] (`vaderSentiment`
  package; a lexicon and rules, runs offline; Hutto & Gilbert 2014).
- `"sklearn:PATH"`: a scikit-learn text classifier saved with joblib (e.g. the IMDb demo's gold); the score is
  its probability of the last class (for 0/1 labels: P(1)) for prompt + response when the prompt is a plain
  string (a text continuation), for the response alone after chat messages. joblib files are pickles: load
  only files you made or trust.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path

import torch
from accelerate.utils import send_to_device

from alignkit.data.collate import pad_rows
from alignkit.data.records import Text
from alignkit.data.tokenize import Encoder
from alignkit.errors import AlignkitError, ConfigError
from alignkit.models.load import load_reward_model, load_tokenizer
from alignkit.models.logprobs import packed_reward_scores, packing_supported, reward_scores
from alignkit.rollout.engine import score_by_prompt

OFFSET_KEY = "alignkit_reward_offset"


class ModelReward:
    def __init__(self, path: str, *, batch_size: int = 16, max_length: int = 1024, max_prompt_length: int = 512,
                 chat_template: bool = False, dtype: str = "float32", packed: bool = True):
        self.model = load_reward_model(path, dtype=dtype).eval()
        self.model.requires_grad_(False)
        self.encoder = Encoder(load_tokenizer(path), max_length=max_length, max_prompt_length=max_prompt_length,
                               chat_template=chat_template)
        self.offset = float(getattr(self.model.config, OFFSET_KEY, 0.0) or 0.0)
        self.batch_size = batch_size
        self.packed = packed and packing_supported(self.model) is None
        self.name = path

    @torch.no_grad()
    def __call__(self, prompts: list[Text], responses: list[str]) -> torch.Tensor:
        rows = [self.encoder.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        dev = next(self.model.parameters()).device
        pad = self.encoder.tok.pad_token_id
        if self.packed:  # padding-free, each distinct prompt laid out once for all its responses
            cut = [mask.index(1) if 1 in mask else len(mask) for _, mask in rows]
            scores = score_by_prompt(lambda b: packed_reward_scores(self.model, send_to_device(b, dev)),
                                     [ids[:k] for (ids, _), k in zip(rows, cut, strict=True)],
                                     [ids[k:] for (ids, _), k in zip(rows, cut, strict=True)], pad)
            return scores - self.offset
        scores = []
        for i in range(0, len(rows), self.batch_size):
            b = pad_rows(rows[i : i + self.batch_size], pad)
            scores.append(reward_scores(self.model, b["input_ids"].to(dev), b["attention_mask"].to(dev)).cpu())
        return torch.cat(scores) - self.offset


def _import_function(spec: str):
    if ":" not in spec:
        raise ConfigError(f"--reward '{spec}': expected module:function, path/to/file.py:function or a built-in "
                          f"name ({', '.join(BUILTIN_REWARDS)})")
    module_name, func_name = spec.rsplit(":", 1)
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.exists():
                raise ConfigError(f"--reward '{spec}': file {module_name} not found")
            mspec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"--reward '{spec}': cannot import {module_name}: {e}") from e
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ConfigError(f"--reward '{spec}': {module_name} has no function {func_name}")
    return fn


class CallableReward:
    def __init__(self, spec: str):
        if spec.startswith(SKLEARN_PREFIX):
            self.fn = TextClassifierScore(spec[len(SKLEARN_PREFIX):])
        else:
            self.fn = BUILTIN_REWARDS[spec] if spec in BUILTIN_REWARDS else _import_function(spec)
        self.name = spec

    def __call__(self, prompts: list[Text], responses: list[str]) -> torch.Tensor:
        values = self.fn(list(prompts), list(responses))
        try:
            scores = [float(v) for v in values]
        except (TypeError, ValueError) as e:
            raise AlignkitError(f"reward function {self.name} must return a list of numbers: {e}") from e
        if len(scores) != len(responses):
            raise AlignkitError(f"reward function {self.name} returned {len(scores)} scores for {len(responses)} responses")
        bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
        if bad:
            raise AlignkitError(f"reward function {self.name} returned a non-finite score for response {bad[0]}: "
                                f"{responses[bad[0]][:200]!r}")
        return torch.tensor(scores, dtype=torch.float32)


def vader_score(prompts: list[Text], responses: list[str]) -> list[float]:
    """VADER compound sentiment of each response, in [-1, 1] (the prompt is ignored)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as e:
        raise ConfigError("the 'vader' reward needs the package vaderSentiment: pip install vaderSentiment") from e
    analyzer = SentimentIntensityAnalyzer()
    return [analyzer.polarity_scores(r)["compound"] for r in responses]


BUILTIN_REWARDS = {"vader": vader_score}
SKLEARN_PREFIX = "sklearn:"


class TextClassifierScore:
    """P(last class) of a joblib-saved scikit-learn text classifier (see the module docstring)."""

    def __init__(self, path: str):
        if not Path(path).is_file():
            raise ConfigError(f"--reward {SKLEARN_PREFIX}{path}: file not found")
        try:
            import joblib
        except ImportError as e:
            raise ConfigError("an sklearn: reward needs scikit-learn: pip install scikit-learn") from e
        self.model = joblib.load(path)
        if not hasattr(self.model, "predict_proba"):
            raise ConfigError(f"--reward {SKLEARN_PREFIX}{path}: the saved object has no predict_proba")

    def __call__(self, prompts: list[Text], responses: list[str]) -> list[float]:
        texts = [p + r if isinstance(p, str) else r for p, r in zip(prompts, responses, strict=True)]
        return self.model.predict_proba(texts)[:, -1].tolist()


def reward_source(reward_model: str | None, reward: str | None, **model_kwargs):
    """The source named by `--reward-model PATH` or `--reward module:function` (exactly one)."""
    if bool(reward_model) == bool(reward):
        raise ConfigError("give exactly one of --reward-model PATH or --reward module:function")
    return ModelReward(reward_model, **model_kwargs) if reward_model else CallableReward(reward)
