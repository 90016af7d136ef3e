"""The arithmetic task (`alignkit demo --task arithmetic`): problems whose answers the reward recovers from the text
alone, training and held-out problems that never coincide, exact match of the final number, and the demo's plumbing
(online methods only, trained on the verifiable reward)."""

from __future__ import annotations

import json
import random

import pytest

from alignkit.cli.main import main
from alignkit.lab import arithmetic
from alignkit.lab.demo import DemoConfig


def test_every_generated_problem_is_solved_from_its_text():
    rng = random.Random(0)
    ops = set()
    for _ in range(2000):
        text, answer = arithmetic.make_problem(rng)
        assert arithmetic.solve(text) == answer, text
        ops.add(next(op for rx, op in arithmetic._SOLVERS if rx.match(text)))
    assert ops == {"+", "-", "*"}


def test_training_and_heldout_problems_are_distinct():
    train, held = arithmetic.problems(300, 100, seed=3)
    assert len(set(train)) == 300 and len(set(held)) == 100 and not set(train) & set(held)
    assert arithmetic.problems(300, 100, seed=3) == (train, held)  # seeded


@pytest.mark.parametrize(("response", "reward"), [
    ("12", 1.0), ("The answer is 12.", 1.0), ("5 + 7 = 12", 1.0), ("12.0", 1.0), ("-12", 0.0),
    ("12 apples, or maybe 13", 0.0), ("twelve", 0.0), ("", 0.0), ("1,012", 0.0),
])
def test_exact_match_reads_the_last_number(response, reward):
    problem = "Ava has 5 apples and gets 7 more. How many apples does Ava have now?" + arithmetic.INSTRUCTION
    assert arithmetic.solve(problem) == 12
    for prompt in (problem, [{"role": "user", "content": problem}]):
        assert arithmetic.exact_match([prompt], [response]) == [reward]


def test_a_prompt_of_another_task_is_refused():
    with pytest.raises(ValueError, match="not an arithmetic problem"):
        arithmetic.exact_match(["Write a review of Alpha."], ["7"])
    near = "Ava has 5 apples and gets 7 more. How many pencils does Ava have now?" + arithmetic.INSTRUCTION
    assert arithmetic.solve(near) is None  # the object must be the same in both places


def test_arithmetic_takes_only_online_methods_and_no_quick_form():
    assert DemoConfig(task="arithmetic").methods  # the default is replaced by grpo,rloo when the demo runs
    with pytest.raises(ValueError, match="online methods .* not dpo"):
        DemoConfig(task="arithmetic", methods="grpo,dpo")
    with pytest.raises(ValueError, match="no --quick form"):
        DemoConfig(task="arithmetic", quick=True)


def test_demo_runs_the_arithmetic_task_end_to_end(tiny_model, tmp_path):
    """The plumbing on a tiny model that cannot add (its accuracy is not the point here; docs/benchmarks.md has
    SmolLM2's): prompts, GRPO on the exact-match reward, the evaluation with exact match as gold, no reward model."""
    out = tmp_path / "arith"
    assert main(["demo", "--task", "arithmetic", "--model", tiny_model, "--methods", "grpo", "--rl-steps", "1",
                 "--train-prompts", "8", "--heldout-prompts", "4", "--max-new-tokens", "4", "--output-dir", str(out),
                 "--no-progress"]) == 0
    results = json.loads((out / "eval" / "results.json").read_text())
    assert set(results["models"]) == {"reference", "grpo"} and "reward_model" not in results
    assert 0.0 <= results["models"]["grpo"]["gold_mean"] <= 1.0
    assert not (out / "rm").exists() and not (out / "labels").exists()
    held = [json.loads(x)["prompt"][0]["content"] for x in (out / "prompts" / "heldout.jsonl").read_text().splitlines()]
    train = [json.loads(x)["prompt"][0]["content"] for x in (out / "prompts" / "train.jsonl").read_text().splitlines()]
    assert len(held) == 4 and not set(held) & set(train) and all(arithmetic.solve(p) is not None for p in held)
