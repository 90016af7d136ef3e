"""Shared fixtures: a tiny model and synthetic data with a clear preference signal, built by the tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

GOOD = "great wonderful brilliant superb lovely moving delightful charming".split()
BAD = "awful terrible boring dull dreadful poor weak tedious".split()
FILMS = "Alpha Bravo Comet Delta Echo Falcon Glacier Harbor Island Jungle Kestrel Lantern".split()


def synthetic_pairs(n: int, seed: int) -> list[dict]:
    """Prompt 'Review of X:'; chosen = positive words, rejected = negative words (clear signal)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        film = rng.choice(FILMS)
        k = rng.randint(3, 6)
        out.append({
            "prompt": f"Review of {film}:",
            "chosen": " " + " ".join(rng.choice(GOOD) for _ in range(k)) + ".",
            "rejected": " " + " ".join(rng.choice(BAD) for _ in range(k)) + ".",
        })
    return out


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Reference log-prob caches go to a per-session folder, not the user's cache; converted built-in models
    (SmolLM2 from its GGUF, ~20 s) are shared with the user's cache so each session need not redo it."""
    import os

    from alignkit.models.names import cache_dir

    models = cache_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("ALIGNKIT_CACHE")
    private = tmp_path_factory.mktemp("alignkit-cache")
    (private / "models").symlink_to(models, target_is_directory=True)
    os.environ["ALIGNKIT_CACHE"] = str(private)
    yield
    if old is None:
        os.environ.pop("ALIGNKIT_CACHE", None)
    else:
        os.environ["ALIGNKIT_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from alignkit.models.tiny import make_tiny_model

    texts = [p[k] for p in synthetic_pairs(300, 99) for k in ("prompt", "chosen", "rejected")]
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts, vocab_size=400, hidden_size=64,
                           num_layers=2, seed=0)


@pytest.fixture(scope="session")
def pair_files(tmp_path_factory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("pairs")
    return write_jsonl(d / "train.jsonl", synthetic_pairs(256, 1)), write_jsonl(d / "eval.jsonl", synthetic_pairs(64, 2))


@pytest.fixture(scope="session")
def sft_files(tmp_path_factory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("sft")
    conv = lambda rows: [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows]  # noqa: E731
    return (write_jsonl(d / "train.jsonl", conv(synthetic_pairs(256, 3))),
            write_jsonl(d / "eval.jsonl", conv(synthetic_pairs(64, 4))))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> str:
    from alignkit.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_gpt2") / "model", None, arch="gpt2", vocab_size=400,
                           hidden_size=64, num_layers=2, seed=0)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def causal_lm(request, tiny_model, tiny_gpt2):
    """The tiny Llama and the tiny GPT-2, loaded in float32, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    path = tiny_model if request.param == "llama" else tiny_gpt2
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    expected = "LlamaForCausalLM" if request.param == "llama" else "GPT2LMHeadModel"
    assert type(model).__name__ == expected
    return model


def logps_by_hand(model, items: list[dict]) -> list[float]:
    """Summed response log-probs of token-id pairs ({"prompt", "chosen", "rejected"}), all chosen responses then
    all rejected ones, each from one plain forward of the model over prompt + response (float64 log-softmax)."""
    import torch

    out = []
    with torch.no_grad():
        for side in ("chosen", "rejected"):
            for it in items:
                ids = torch.tensor([it["prompt"] + it[side]])
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
                n = len(it["prompt"])
                out.append(float(logp[torch.arange(n - 1, ids.shape[1] - 1), ids[0, n:]].sum()))
    return out
