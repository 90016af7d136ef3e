"""Reward-model recipes on the sentiment demo's data, against two baselines, on the same held-out pairs.

    python benchmarks/rm_recipe.py --run runs/demo                 # every recipe and both baselines
    python benchmarks/rm_recipe.py --run runs/demo --recipe all-pairs-b2-2ep --recipe best-worst

`--run` is a finished (or partly finished) `alignkit demo` folder: its `labels/` hold the reference's K samples
per training prompt with their gold scores (`samples.jsonl`), the panel's best-vs-worst pairs (`votes.jsonl`)
and its votes on every pair (`all_votes.jsonl`). The held-out pairs: the reference samples K responses for each
of `--heldout-prompts` held-out prompts (other phrasings and subjects than training, `review_prompts`), scored by
VADER; every within-prompt pair whose gold differs counts, and accuracy is also given for gold gaps >= 0.3 and
>= 0.6. They are made once and kept in `--work`.

Recipes train SmolLM2 as the demo's reward stage does (warm-up 10%), varying the data, learning rate, epochs, batch
size and how many of the top transformer blocks are trained (`train_layers`; 0 = every weight). The votes on every
pair are grouped by prompt, so there a batch of 2 is 2 prompts, 8 responses and 12 pairs. Baselines: a bag-of-words
logistic regression on the response text, trained on the same pairs as the `all-pairs-*` recipes (the difference of
the two responses' word counts), and logistic-regression probes on the frozen reference's features (the last
token's final hidden state, and the mean over the response tokens). Prints one JSON line per recipe or baseline.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _recipe(data: str = "all_votes.jsonl", lr: float = 1e-4, epochs: float = 1.0, batch: int = 2, top: int = 0):
    """(data file in labels/, learning rate, epochs, batch size: pairs, or prompts when grouped, trained top blocks:
    0 = every weight)"""
    return data, lr, epochs, batch, top


RECIPES = {
    "best-worst": _recipe("votes.jsonl", batch=8),
    "all-pairs-b8": _recipe(batch=8),
    "all-pairs-b2": _recipe(),
    "all-pairs-b1": _recipe(batch=1),
    "all-pairs-b2-2ep": _recipe(epochs=2.0),
    "all-pairs-b1-lr5e-5": _recipe(lr=5e-5, batch=1),
    "all-pairs-b1-lr2e-4": _recipe(lr=2e-4, batch=1),
    "all-pairs-b2-2ep-top10": _recipe(epochs=2.0, top=10),
    "all-pairs-b2-2ep-top10-lr2e-4": _recipe(lr=2e-4, epochs=2.0, top=10),
    "all-pairs-b2-3ep-top10": _recipe(epochs=3.0, top=10),
    "all-pairs-b2-2ep-top15": _recipe(epochs=2.0, top=15),
    "all-pairs-b2-3ep-top6-lr2e-4": _recipe(lr=2e-4, epochs=3.0, top=6),
}
GAPS = (0.0, 0.3, 0.6)


def heldout(work: Path, reference: str, n: int, k: int, max_new_tokens: int, seed: int) -> list[dict]:
    file = work / "heldout_samples.jsonl"
    if file.exists():
        return [json.loads(x) for x in file.read_text().splitlines()]
    from alignkit.lab.sentiment import review_prompts
    from alignkit.models.load import load_tokenizer
    from alignkit.rollout.rewards import CallableReward
    from alignkit.rollout.sample import SampleSettings, sample_policy

    prompts = [[{"role": "user", "content": p}] for p in review_prompts(n, split="heldout", seed=seed + 1000)]
    s = SampleSettings(max_new_tokens=max_new_tokens, samples=k, seed=seed + 5, batch_size=64)
    sm = sample_policy(reference, load_tokenizer(reference), prompts, s)
    gold = CallableReward("vader")(sm.prompts, sm.responses).tolist()
    rows = [{"prompt": p, "group": g, "response": r, "gold": v}
            for p, g, r, v in zip(sm.prompts, sm.prompt_index, sm.responses, gold, strict=True)]
    work.mkdir(parents=True, exist_ok=True)
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def accuracy(scores: list[float], rows: list[dict]) -> dict:
    from alignkit.evaluate.stats import pairwise_agreement

    out = {}
    for gap in GAPS:
        acc, n = pairwise_agreement(scores, [r["gold"] for r in rows], [r["group"] for r in rows], min_gap=gap)
        out[f"gap>={gap}"] = {"accuracy": round(acc, 4), "pairs": n}
    return out


def train_recipe(name: str, labels: Path, work: Path, model: str, rows: list[dict], seed: int) -> dict:
    from alignkit.rollout.rewards import ModelReward
    from alignkit.train import RewardConfig, run_reward

    data, lr, epochs, batch, top = RECIPES[name]
    out = work / name
    t0 = time.perf_counter()
    if not (out / "model.safetensors").exists():
        run_reward(RewardConfig(model=model, data=str(labels / data), data_format="votes", output_dir=str(out),
                                epochs=epochs, batch_size=batch, learning_rate=lr, eval_fraction=0.1, max_length=256,
                                max_prompt_length=128, warmup_ratio=0.1, seed=seed, progress=False,
                                train_layers=top))
    seconds = time.perf_counter() - t0
    scores = ModelReward(str(out))([r["prompt"] for r in rows], [r["response"] for r in rows]).tolist()
    return {"recipe": name, "data": data, "learning_rate": lr, "epochs": epochs, "batch_size": batch,
            "train_layers": top, "train_seconds": round(seconds, 1),
            **accuracy(scores, rows)}


def _pair_rows(labels: Path) -> list[tuple[object, str, str]]:
    """(prompt, preferred, other) for every voted pair: the votes loader's majority orientation; ties skipped."""
    from alignkit.data import load_pairs

    pairs, _ = load_pairs(str(labels / "all_votes.jsonl"), format="votes")
    return [(p.prompt, p.chosen, p.rejected) for p in pairs if p.label > 0.5]


def _fit_pairs(x_win, x_lose, c: float):
    """A linear scorer w·x from pairs: logistic regression on ±(x_win − x_lose), no intercept."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    d = np.asarray(x_win) - np.asarray(x_lose)
    clf = LogisticRegression(C=c, fit_intercept=False, max_iter=5000).fit(np.vstack([d, -d]),
                                                                         [1] * len(d) + [0] * len(d))
    return clf.coef_[0]


def bag_of_words(labels: Path, rows: list[dict]) -> list[dict]:
    from sklearn.feature_extraction.text import CountVectorizer

    pairs = _pair_rows(labels)
    vec = CountVectorizer().fit([t for _, w, lo in pairs for t in (w, lo)])
    out = []
    for c in (0.1, 1.0):
        w = _fit_pairs(vec.transform([p[1] for p in pairs]).toarray(), vec.transform([p[2] for p in pairs]).toarray(), c)
        scores = (vec.transform([r["response"] for r in rows]).toarray() @ w).tolist()
        out.append({"baseline": "bag-of-words", "C": c, "train_pairs": len(pairs), **accuracy(scores, rows)})
    return out


def probes(labels: Path, rows: list[dict], model: str) -> list[dict]:
    import torch

    from alignkit.data.tokenize import Encoder
    from alignkit.models.load import load_causal_lm, load_tokenizer

    tok = load_tokenizer(model)
    lm = load_causal_lm(model).eval()
    enc = Encoder(tok, max_length=256, max_prompt_length=128)
    cache: dict[str, tuple] = {}

    @torch.no_grad()
    def features(prompt, response) -> tuple:
        key = json.dumps([prompt, response])
        if key not in cache:
            ids, mask = enc.encode(prompt, response)
            h = lm.model(torch.tensor([ids])).last_hidden_state[0]
            m = torch.tensor(mask, dtype=torch.bool)
            cache[key] = (h[-1].numpy(), h[m].mean(0).numpy() if m.any() else h[-1].numpy())
        return cache[key]

    pairs = _pair_rows(labels)
    win = [features(p, w) for p, w, _ in pairs]
    lose = [features(p, lo) for p, _, lo in pairs]
    held = [features(r["prompt"], r["response"]) for r in rows]
    out = []
    for which, name in ((0, "last-token"), (1, "mean-pooled")):
        for c in (0.01, 0.1, 1.0):
            w = _fit_pairs([f[which] for f in win], [f[which] for f in lose], c)
            scores = [float(f[which] @ w) for f in held]
            out.append({"baseline": f"probe-{name}", "C": c, "train_pairs": len(pairs), **accuracy(scores, rows)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="an alignkit demo run folder (its labels/ stage finished)")
    ap.add_argument("--work", default=None, help="where held-out samples and reward models go (default RUN/rm_recipe)")
    ap.add_argument("--recipe", action="append", choices=sorted(RECIPES), help="recipes to train (default all)")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--heldout-prompts", type=int, default=96)
    ap.add_argument("--k", type=int, default=4)
    args = ap.parse_args()
    run = Path(args.run)
    cfg = json.loads((run / "demo_config.json").read_text())
    work = Path(args.work) if args.work else run / "rm_recipe"
    rows = heldout(work, cfg["model"], args.heldout_prompts, args.k, cfg["max_new_tokens"], cfg["seed"])
    labels = run / "labels"
    if not args.no_baselines:
        for r in bag_of_words(labels, rows) + probes(labels, rows, cfg["model"]):
            print(json.dumps(r), flush=True)
    for name in args.recipe or list(RECIPES):
        print(json.dumps(train_recipe(name, labels, work, cfg["model"], rows, cfg["seed"])), flush=True)


if __name__ == "__main__":
    main()
