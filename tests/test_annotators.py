"""Simulated annotators: Bradley-Terry vote probabilities, and records that the votes loader turns into
hard and soft labels."""

import math
import random

import pytest

from alignkit.data import load_pairs
from alignkit.lab.annotators import annotate_groups, annotate_pairs, simulate_votes, vote_probability


def test_vote_probability_is_logistic():
    assert vote_probability(0.5, 0.2, 0.1) == pytest.approx(1 / (1 + math.exp(-3)))
    assert vote_probability(0.2, 0.5, 0.1) == pytest.approx(1 / (1 + math.exp(3)))
    assert vote_probability(0.3, 0.3, 0.1) == 0.5
    assert vote_probability(1.0, 0.0, 0.0) == 1.0 and vote_probability(-50.0, 50.0, 0.01) == 0.0


def test_vote_shares_match_the_probability():
    rng = random.Random(1)
    votes = [v for _ in range(4000) for v in simulate_votes(0.1, 0.0, annotators=5, noise=0.1, rng=rng)]
    share = votes.count("a") / len(votes)
    assert share == pytest.approx(1 / (1 + math.exp(-1)), abs=0.01)  # 0.731


def test_records_load_as_soft_labels():
    prompts = [f"p{i}" for i in range(200)]
    a = [f"good {i}" for i in range(200)]
    b = [f"bad {i}" for i in range(200)]
    recs = annotate_pairs(prompts, a, b, [0.6] * 200, [0.4] * 200, annotators=5, noise=0.2, seed=3)
    pairs, report = load_pairs(recs, format="votes")
    assert len(pairs) == 200
    # each annotator prefers a with p = σ(1) = 0.731: the majority picks a mostly, soft labels in [0.6, 1]
    majority_a = sum(p.chosen.startswith("good") for p in pairs) / len(pairs)
    assert 0.8 < majority_a < 0.97  # P(majority of 5 prefers a) = 0.8757 under σ(1)
    assert all(p.label in (0.6, 0.8, 1.0) for p in pairs)
    assert 0 < report.stats["pairwise_agreement"] < 1


def test_vader_builtin_reward():
    from alignkit.rollout.rewards import CallableReward

    scores = CallableReward("vader")(["p", "p"], ["A wonderful, moving film.", "A dull, boring mess."])
    assert scores[0] > 0.5 and scores[1] < -0.5


def test_groups_keep_the_panels_best_against_its_worst():
    prompts = ["p1", "p2", "p3"]
    groups = [["mid", "best", "worst", "low"], ["x", "y"], ["same", "same", " "]]
    golds = [[0.1, 0.9, -0.8, -0.2], [0.3, -0.3], [0.0, 0.0, 0.0]]
    records, every, skipped = annotate_groups(prompts, groups, golds, annotators=3, noise=0.0, seed=0)
    assert skipped == 1 and len(records) == 2  # p3: one distinct non-empty response
    first = records[0]
    assert {first["response_a"], first["response_b"]} == {"best", "worst"}
    winner = "a" if first["response_a"] == "best" else "b"
    assert first["votes"] == [winner] * 3  # a perfect panel, whatever the presentation order
    assert {records[1]["response_a"], records[1]["response_b"]} == {"x", "y"}  # K=2: the one pair
    # presentation order is random: over many prompts the best is shown first about half the time
    # every pair: the 6 of p1 and the one of p2, each voted for its better response by a perfect panel
    assert len(every) == 6 + 1
    assert {frozenset((r["response_a"], r["response_b"])) for r in every[:6]} == {
        frozenset(p) for p in [("mid", "best"), ("mid", "worst"), ("mid", "low"), ("best", "worst"), ("best", "low"),
                               ("worst", "low")]}
    for r in every:
        better = "a" if r["gold_a"] > r["gold_b"] else "b"
        assert r["votes"] == [better] * 3
    assert {every[6]["response_a"], every[6]["response_b"]} == {"x", "y"}
    many, _, _ = annotate_groups(["p"] * 200, [["good", "bad"]] * 200, [[1.0, -1.0]] * 200, annotators=1, noise=0.0)
    firsts = sum(r["response_a"] == "good" for r in many)
    assert 70 < firsts < 130
