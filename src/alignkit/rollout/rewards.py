"""Reward sources for online RL: a reward model trained by `alignkit rm`, or any Python callable.

A source is called with the prompts (strings or message lists, as in the prompt file) and the decoded
responses (EOS removed), and returns one float score per response.

- `ModelReward(path)`: scores with the reward model's own tokenizer (prompt + response + EOS, exactly as in
  `alignkit rm` training), minus the stored `alignkit_reward_offset` (mean 0 on its training responses).
  Batches are packed padding-free with each distinct prompt laid out once for all its responses
  (`rollout.engine.score_by_prompt`) where the model computes packed rows exactly; padded otherwise.
- `CallableReward("module:function")` or `"path/to/file.py:function"`: `function(prompts, responses)` returns
  a list of numbers (a gold scorer, a rule, a judge): a list or tuple of ints and floats (not bools, not
  strings) or a 1-D numpy array or tensor, one per response. It runs in a thread and may take at most
  `timeout` seconds per batch (`--reward-timeout`); an exception, an `exit()` or a hang inside it stops the
  run with one AlignkitError naming the function and the batch.
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
import numbers
import threading
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import send_to_device

from alignkit.data.records import Text
from alignkit.data.tokenize import Encoder
from alignkit.errors import AlignkitError, ConfigError
from alignkit.models.load import load_reward_model, load_tokenizer
from alignkit.models.logprobs import capabilities, score
from alignkit.rollout.engine import score_by_prompt

OFFSET_KEY = "alignkit_reward_offset"


class ModelReward:
    def __init__(self, path: str, *, batch_size: int = 16, max_length: int = 1024, max_prompt_length: int = 512,
                 chat_template: bool = False, dtype: str = "float32", packed: bool = True):
        self.model = load_reward_model(path, dtype=dtype, trained_head=True).eval()
        self.model.requires_grad_(False)
        self.encoder = Encoder(load_tokenizer(path), max_length=max_length, max_prompt_length=max_prompt_length,
                               chat_template=chat_template)
        self.offset = float(getattr(self.model.config, OFFSET_KEY, 0.0) or 0.0)
        self.batch_size = batch_size
        self.packed = packed and capabilities(self.model).packing is None
        self.name = path

    @torch.no_grad()
    def __call__(self, prompts: list[Text], responses: list[str]) -> torch.Tensor:
        rows = [self.encoder.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        dev = next(self.model.parameters()).device
        pad = self.encoder.tok.pad_token_id

        def rewards(batch):
            return score(self.model, send_to_device(batch, dev), "reward").reward

        # padding-free, each distinct prompt laid out once for all its responses; or one sequence per row
        cut = [mask.index(1) if 1 in mask else len(mask) for _, mask in rows]
        scores = score_by_prompt(rewards, [ids[:k] for (ids, _), k in zip(rows, cut, strict=True)],
                                 [ids[k:] for (ids, _), k in zip(rows, cut, strict=True)], pad, packed=self.packed,
                                 rows=self.batch_size)
        return scores - self.offset


def _describe(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _import_function(spec: str, option: str = "--reward"):
    if ":" not in spec:
        raise ConfigError(f"{option} '{spec}': expected module:function, path/to/file.py:function or a built-in "
                          f"name ({', '.join(BUILTIN_REWARDS)})")
    module_name, func_name = spec.rsplit(":", 1)
    if module_name.endswith(".py") and not Path(module_name).is_file():
        raise ConfigError(f"{option} '{spec}': file {module_name} not found")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            mspec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{option} '{spec}': cannot import {module_name}: {e}") from e
    except (Exception, SystemExit) as e:  # the user's module raised, or called exit(), while being imported
        raise ConfigError(f"{option} '{spec}': importing {module_name} failed: {_describe(e)}") from e
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ConfigError(f"{option} '{spec}': {module_name} has no function {func_name}")
    return fn


def _real(v) -> bool:
    """An int or float (numpy's too), not a bool (numpy's bool is no numbers.Real)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _scores(values, n: int, name: str) -> list[float]:
    """The scores a reward function returned, checked: a list or tuple of real numbers (not bools or strings)
    or a 1-D numpy array or tensor of them, `n` long."""
    if isinstance(values, np.ndarray | torch.Tensor):
        numeric = (values.dtype.kind in "iuf" if isinstance(values, np.ndarray)
                   else values.dtype != torch.bool and not values.dtype.is_complex)
        if values.ndim != 1 or not numeric:
            raise AlignkitError(f"reward function {name} returned an array of shape {tuple(values.shape)} and dtype "
                                f"{values.dtype}; expected a 1-D array of numbers, one per response")
        values = values.tolist()
    elif not isinstance(values, list | tuple):
        raise AlignkitError(f"reward function {name} must return a list of numbers, one per response; got "
                            f"{type(values).__name__}")
    bad = next((i for i, v in enumerate(values) if not _real(v)), None)
    if bad is not None:
        raise AlignkitError(f"reward function {name} returned {values[bad]!r} ({type(values[bad]).__name__}) for "
                            f"response {bad}; expected a number")
    if len(values) != n:
        raise AlignkitError(f"reward function {name} returned {len(values)} scores for {n} responses")
    try:
        return [float(v) for v in values]
    except OverflowError as e:
        raise AlignkitError(f"reward function {name} returned an integer too large for a float") from e


def _call_with_timeout(fn, args: tuple, timeout: float):
    """`fn(*args)` in a daemon thread, with the caller's grad mode: (True, result), (False, the exception it
    raised, SystemExit included), or None when it has not returned after `timeout` seconds (the thread is left
    running: Python cannot stop it)."""
    outcome: list = []
    grad = torch.is_grad_enabled()

    def target():
        try:
            with torch.set_grad_enabled(grad):
                outcome.append((True, fn(*args)))
        except BaseException as e:  # noqa: BLE001 - reported to the caller, whatever it was
            outcome.append((False, e))

    thread = threading.Thread(target=target, name="alignkit-reward", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else None


class CallableReward:
    def __init__(self, spec: str, *, timeout: float = 600.0, option: str = "--reward"):
        if spec.startswith(SKLEARN_PREFIX):
            self.fn = TextClassifierScore(spec[len(SKLEARN_PREFIX):], option)
        else:
            self.fn = BUILTIN_REWARDS[spec] if spec in BUILTIN_REWARDS else _import_function(spec, option)
        self.name = spec
        self.timeout = timeout
        self.calls = 0  # batches scored so far (named in errors)

    def __call__(self, prompts: list[Text], responses: list[str]) -> torch.Tensor:
        self.calls += 1
        outcome = _call_with_timeout(self.fn, (list(prompts), list(responses)), self.timeout)
        if outcome is None:
            raise AlignkitError(f"reward {self.name} timed out on batch {self.calls}: no result after "
                                f"{self.timeout:g} s (--reward-timeout)")
        ok, values = outcome
        if not ok:
            if isinstance(values, AlignkitError):
                raise values
            raise AlignkitError(f"reward {self.name} failed on batch {self.calls}: {_describe(values)}") from values
        scores = _scores(values, len(responses), self.name)
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

    def __init__(self, path: str, option: str = "--reward"):
        if not Path(path).is_file():
            raise ConfigError(f"{option} {SKLEARN_PREFIX}{path}: file not found")
        try:
            import joblib
        except ImportError as e:
            raise ConfigError("an sklearn: reward needs scikit-learn: pip install scikit-learn") from e
        self.model = joblib.load(path)
        if not hasattr(self.model, "predict_proba"):
            raise ConfigError(f"{option} {SKLEARN_PREFIX}{path}: the saved object has no predict_proba")

    def __call__(self, prompts: list[Text], responses: list[str]) -> list[float]:
        texts = [p + r if isinstance(p, str) else r for p, r in zip(prompts, responses, strict=True)]
        return self.model.predict_proba(texts)[:, -1].tolist()


def reward_source(reward_model: str | None, reward: str | None, *, timeout: float = 600.0, **model_kwargs):
    """The source named by `--reward-model PATH` or `--reward module:function` (exactly one); `timeout`: seconds a
    reward function may take per batch."""
    if bool(reward_model) == bool(reward):
        raise ConfigError("give exactly one of --reward-model PATH or --reward module:function")
    return ModelReward(reward_model, **model_kwargs) if reward_model else CallableReward(reward, timeout=timeout)
