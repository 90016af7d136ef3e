"""Reward-model pairs grouped by shared responses (`group_pairs`): the grouping by hand, the grouped loss against
every pair scored on its own, and a reward model that learns from a panel's votes on every pair of K samples."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from alignkit.data.collate import collate_rankings, group_pairs, pack_rankings, with_pair_index
from alignkit.models.load import load_reward_model
from alignkit.models.logprobs import reward_scores
from alignkit.train.reward import pair_step
from conftest import BAD, GOOD, write_jsonl

PAD = 0


def test_group_pairs_by_hand():
    p, q = [1, 2], [3]
    a, b, c, d, e = [10], [11, 12], [13], [14], [15, 16]
    items = [
        {"prompt": p, "chosen": a, "rejected": b, "label": 0.8},
        {"prompt": p, "chosen": d, "rejected": e},  # shares nothing with the first: a group of its own
        {"prompt": q, "chosen": a, "rejected": b, "margin": 0.5},  # same texts, other prompt: its own group
        {"prompt": p, "chosen": c, "rejected": b, "label": 0.6},  # shares b with the first
        {"prompt": p, "chosen": a, "rejected": c},  # a and c: in the first group too
    ]
    groups = group_pairs(items)
    assert groups == [
        {"prompt": p, "responses": [a, b, c], "pairs": [(0, 1, 0.8, 0.0), (2, 1, 0.6, 0.0), (0, 2, 1.0, 0.0)]},
        {"prompt": p, "responses": [d, e], "pairs": [(0, 1, 1.0, 0.0)]},
        {"prompt": q, "responses": [a, b], "pairs": [(0, 1, 1.0, 0.5)]},
    ]


def test_big_groups_are_split():
    from alignkit.data.collate import GROUP_PAIRS

    responses = [[20 + i] for i in range(8)]  # every pair of 8 responses: 28 pairs, all connected
    items = [{"prompt": [1], "chosen": responses[i], "rejected": responses[j]} for i in range(8) for j in range(i + 1, 8)]
    groups = group_pairs(items)
    assert [len(g["pairs"]) for g in groups] == [GROUP_PAIRS, 28 - GROUP_PAIRS]
    for g in groups:  # each pair still names its own two responses
        assert all(g["responses"][i] != g["responses"][j] for i, j, _, _ in g["pairs"])
    assert sum(len(g["pairs"]) for g in groups) == 28


def _bt(rc: float, rr: float, p: float, m: float) -> float:
    d = rc - rr - m
    return -p * math.log(1 / (1 + math.exp(-d))) - (1 - p) * math.log(1 / (1 + math.exp(d)))


@pytest.mark.parametrize("layout", ["padded", "packed-shared", "packed"])
def test_grouped_loss_is_the_mean_over_pairs_scored_alone(tiny_model, layout):
    """The grouped batch's loss equals the Bradley-Terry mean over its pairs, each response scored alone."""
    model = load_reward_model(tiny_model).eval()
    rng = random.Random(0)
    items = []
    for g in range(3):
        prompt = [rng.randrange(5, 300) for _ in range(3 + g)]
        resp = [[rng.randrange(5, 300) for _ in range(rng.randint(1, 6))] for _ in range(4)]
        items += [{"prompt": prompt, "chosen": resp[i], "rejected": resp[j], "label": rng.choice([1.0, 0.8, 0.6]),
                   "margin": rng.choice([0.0, 0.3])} for i in range(4) for j in range(i + 1, 4)]
    groups = group_pairs(items)
    assert len(groups) == 3 and all(len(g["responses"]) == 4 for g in groups)
    if layout == "padded":
        batch = collate_rankings(groups, pad_id=PAD)
    else:
        batch = pack_rankings(groups, pad_id=PAD, pack_tokens=64, shared_prompt=layout == "packed-shared")
    batch = with_pair_index(batch, groups)
    assert batch["pair_chosen"].numel() == 18
    n_scored = batch["last_index"].numel() if "segment" in batch else batch["input_ids"].shape[0]
    assert n_scored == 12  # each of the 3 × 4 responses scored once, not once per pair (36)
    with torch.no_grad():
        loss, metrics = pair_step(model, batch)

        def alone(prompt, response):
            ids = torch.tensor([prompt + response])
            return float(reward_scores(model, ids, torch.ones_like(ids))[0])

        terms = [_bt(alone(it["prompt"], it["chosen"]), alone(it["prompt"], it["rejected"]), it["label"], it["margin"])
                 for it in items]
    assert float(loss) == pytest.approx(sum(terms) / len(terms), rel=1e-5, abs=1e-6)


def graded_votes(n_prompts: int, seed: int) -> list[dict]:
    """K=4 responses per prompt with 0-3 positive words of 3; every pair voted on by 5 simulated annotators that
    prefer the response with more positive words with probability σ(difference)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_prompts):
        responses, seen = [], set()
        for good in range(4):
            words = [rng.choice(GOOD) for _ in range(good)] + [rng.choice(BAD) for _ in range(3 - good)]
            rng.shuffle(words)
            responses.append(" " + " ".join(words) + ".")
        if len(set(responses)) < 4 or tuple(responses) in seen:
            continue
        for a in range(4):
            for b in range(a + 1, 4):
                p = 1 / (1 + math.exp(-(a - b)))
                rows.append({"prompt": f"Review number {i}:", "response_a": responses[a], "response_b": responses[b],
                             "votes": ["a" if rng.random() < p else "b" for _ in range(5)]})
    return rows


def test_reward_model_learns_from_every_pair(tiny_model, tmp_path):
    from alignkit.train import RewardConfig, run_reward

    rows = graded_votes(64, 1)
    data = write_jsonl(tmp_path / "votes.jsonl", rows)
    out = tmp_path / "rm"
    res = run_reward(RewardConfig(model=tiny_model, data=data, data_format="votes", output_dir=str(out),
                                  learning_rate=1e-3, max_steps=30, eval_fraction=0.25, batch_size=4, eval_every=10,
                                  warmup_ratio=0.0, seed=0, progress=False))
    info = json.loads((out / "run_info.json").read_text())
    # the 6 pairs of a prompt are one group, and no prompt is on both sides of the split (it would make two)
    assert info["records"]["train"] + info["records"]["eval"] == len({r["prompt"] for r in rows})
    assert res.first_eval["accuracy"] < 0.75
    assert res.eval["accuracy"] >= 0.85, res.eval
    # independently of the training step's own accuracy: the saved model, scored through ModelReward on new
    # prompts, ranks a response with more positive words above one with fewer
    from alignkit.evaluate.stats import pairwise_agreement
    from alignkit.rollout.rewards import ModelReward

    fresh = [r for r in graded_votes(16, 2) if r["prompt"].endswith(("3:", "7:", "11:"))]
    texts = sorted({(r["prompt"], t) for r in fresh for t in (r["response_a"], r["response_b"])})
    reward = ModelReward(str(out))
    assert reward.packed  # each prompt laid out once for its responses
    scores = reward([p for p, _ in texts], [t for _, t in texts])
    # the padded path (one sequence per row) gives the same scores up to float rounding
    padded = ModelReward(str(out), packed=False, batch_size=5)([p for p, _ in texts], [t for _, t in texts])
    assert len(texts) > 5 and not torch.equal(scores, torch.zeros_like(scores))
    torch.testing.assert_close(scores, padded, atol=1e-4, rtol=1e-4)
    scores = scores.tolist()
    good = [sum(w.strip(".") in GOOD for w in t.split()) for _, t in texts]
    prompts = sorted({p for p, _ in texts})
    acc, n = pairwise_agreement(scores, good, [prompts.index(p) for p, _ in texts])
    assert n >= 12 and acc >= 0.8, (acc, n)
