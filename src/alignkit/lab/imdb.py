"""IMDb mode of the demo: the DPO paper's controlled-sentiment setup on the IMDb review files.

- Reviews come from a folder holding `train.jsonl[.gz]` and `test.jsonl[.gz]` (records with `text` and
  `label`, 1 = positive) or, online, from a hub dataset with those splits and fields (`stanfordnlp/imdb`).
- Gold reward: a TF-IDF + logistic-regression sentiment classifier trained on the train split (its test-split
  accuracy is reported); it scores P(positive) of prompt + response, in [0, 1]. It is saved with joblib and
  used through the reward spec `sklearn:PATH` (see `alignkit.rollout.rewards`).
- Prompts: the first 2-8 tokens (policy tokenizer) of a review, as raw text (no chat template): training
  prompts from train-split reviews, held-out prompts from test-split reviews.
- The policy first learns to continue reviews by SFT on train-split reviews (prefix -> the next tokens).
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

from alignkit.data.readers import iter_raw
from alignkit.errors import AlignkitError, DataError

HUB_ID = "stanfordnlp/imdb"
_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)


def _split_source(data: str, split: str) -> str:
    """The file of `split` in folder `data`, or the hub id `data:split` when `data` is not a local folder."""
    folder = Path(data)
    if folder.is_dir():
        for name in (f"{split}.jsonl.gz", f"{split}.jsonl", f"{split}.parquet"):
            if (folder / name).exists():
                return str(folder / name)
        raise AlignkitError(f"{data}: no {split}.jsonl.gz, {split}.jsonl or {split}.parquet in this folder")
    if folder.exists():
        raise AlignkitError(f"--data {data}: expected a folder with train and test review files")
    return f"{data}:{split}"


def read_reviews(data: str, split: str, limit: int | None = None) -> tuple[list[str], list[int]]:
    """Texts (HTML line breaks turned into spaces) and 0/1 labels of one split; bad records raise naming the line."""
    texts, labels = [], []
    for where, rec in iter_raw(_split_source(data, split)):
        text, label = rec.get("text"), rec.get("label")
        if not isinstance(text, str) or not text.strip():
            raise DataError(where.source, where.line, "text", "expected a non-empty string")
        if isinstance(label, bool) or label not in (0, 1):
            raise DataError(where.source, where.line, "label", f"expected 0 or 1, got {label!r}")
        texts.append(" ".join(_TAG.sub(" ", text).split()))
        labels.append(int(label))
        if limit is not None and len(texts) >= limit:
            break
    return texts, labels


def train_gold(data: str, path: Path, *, seed: int = 0) -> dict:
    """Fit the TF-IDF + logistic-regression gold classifier on the train split, save it to `path` (joblib) and
    return its test-split accuracy."""
    try:
        import joblib
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
    except ImportError as e:
        raise AlignkitError("IMDb mode needs scikit-learn: pip install scikit-learn") from e
    t0 = time.perf_counter()
    x_train, y_train = read_reviews(data, "train")
    x_test, y_test = read_reviews(data, "test")
    clf = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=200_000, sublinear_tf=True),
                        LogisticRegression(C=4.0, max_iter=1000, random_state=seed))
    clf.fit(x_train, y_train)
    accuracy = float((clf.predict(x_test) == y_test).mean())
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(clf, path)
    return {"test_accuracy": accuracy, "train": len(x_train), "test": len(x_test),
            "seconds": round(time.perf_counter() - t0, 1)}


def _sample(texts: list[str], n: int, rng: random.Random) -> list[str]:
    if n > len(texts):
        raise AlignkitError(f"asked for {n} reviews, the split has {len(texts)}")
    return rng.sample(texts, n)


def prefix_prompts(texts: list[str], tok, n: int, *, seed: int, min_tokens: int = 2, max_tokens: int = 8) -> list[str]:
    """`n` prompts: the first 2-8 tokens of distinct randomly chosen reviews, decoded back to text."""
    rng = random.Random(seed)
    out = []
    for text in _sample(texts, n, rng):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        out.append(tok.decode(ids[: rng.randint(min_tokens, max_tokens)]).rstrip())
    return out


def continuation_examples(texts: list[str], tok, n: int, *, seed: int, length: int) -> list[dict]:
    """SFT examples: a 2-8-token review prefix as the prompt, the review's next `length` tokens as completion."""
    rng = random.Random(seed)
    rows = []
    for text in _sample(texts, n, rng):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        cut = rng.randint(2, 8)
        prompt, completion = tok.decode(ids[:cut]), tok.decode(ids[cut : cut + length])
        if prompt.strip() and completion.strip():
            rows.append({"prompt": prompt, "completion": completion})
    return rows
