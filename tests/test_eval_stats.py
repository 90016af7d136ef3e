"""Evaluation statistics against hand-computed values."""

import math

import pytest

from alignkit.evaluate.stats import mean_ci, paired_difference, pairwise_agreement, win_rate


def test_mean_ci_hand_values():
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0])
    # mean 2.5; sample variance = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3; half = 1.96 * sqrt(5/3 / 4)
    assert mean == 2.5
    assert half == pytest.approx(1.959963984540054 * math.sqrt(5 / 12))
    assert mean_ci([7.0]) == (7.0, float("inf"))
    with pytest.raises(ValueError):
        mean_ci([])


def test_win_rate_counts_ties_half():
    assert win_rate([1, 0, 0.5, 2], [0, 1, 0.5, 1]) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    with pytest.raises(ValueError):
        win_rate([1], [1, 2])


def test_pairwise_agreement():
    # prompt 0: gold orders a > b > c, the model orders a > c > b -> pairs (a,b) ok, (a,c) ok, (b,c) wrong
    # prompt 1: gold tie -> skipped
    acc, n = pairwise_agreement([3, 1, 2, 5, 4], [0.9, 0.5, 0.1, 0.3, 0.3], [0, 0, 0, 1, 1])
    assert n == 3 and acc == pytest.approx(2 / 3)
    acc, n = pairwise_agreement([1, 2], [0.5, 0.5], [0, 0])
    assert n == 0 and math.isnan(acc)
    # min_gap 0.41: only (a,c), gap 0.8, counts (ordered right); (a,b) and (b,c), gap 0.4, drop out
    acc, n = pairwise_agreement([3, 1, 2, 5, 4], [0.9, 0.5, 0.1, 0.3, 0.3], [0, 0, 0, 1, 1], min_gap=0.41)
    assert n == 1 and acc == 1.0
    # min_gap 0.3: all three pairs count again, and the wrongly ordered (b,c) with them
    acc, n = pairwise_agreement([3, 1, 2, 5, 4], [0.9, 0.5, 0.1, 0.3, 0.3], [0, 0, 0, 1, 1], min_gap=0.3)
    assert n == 3 and acc == pytest.approx(2 / 3)


def test_paired_difference_hand_values():
    # differences 0.3, 0.2, 0.4, 0.3: mean 0.3, sample variance (0 + 0.01 + 0.01 + 0) / 3, half = z·sqrt(var / 4)
    reference = [0.1, 0.9, -0.5, 0.4]
    policy = [0.4, 1.1, -0.1, 0.7]
    mean, half = paired_difference(policy, reference)
    assert mean == pytest.approx(0.3)
    assert half == pytest.approx(1.959963984540054 * math.sqrt(0.02 / 3 / 4))
    # prompts differ far more than the policy's gain varies: each model's own interval is far wider
    assert half < mean_ci(policy)[1] / 5
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])


def test_eval_samples_are_reused_only_while_nothing_changed(tiny_model, tmp_path):
    """The evaluation sample cache: a rerun reuses each model's samples; a changed policy folder, prompt list or
    setting samples again (a cache keyed on too little would pass the demo's reuse test but fail here)."""
    import shutil

    from alignkit.evaluate.run import EvalSettings, evaluate_policies

    policy = tmp_path / "policy"
    shutil.copytree(tiny_model, policy)
    prompts = ["Write about the river", "Write about the city"]
    out = tmp_path / "eval"

    def run(ps=prompts, **settings):
        evaluate_policies({"p": str(policy)}, tiny_model, ps, "vader", output_dir=out,
                          settings=EvalSettings(max_new_tokens=4, **settings))
        return {f.name: f.stat().st_mtime_ns for f in (out / "samples").glob("*.json")}

    first = run()
    assert set(first) == {"reference.json", "p.json"}
    assert run() == first  # nothing changed: nothing sampled
    (policy / "config.json").write_text((policy / "config.json").read_text())  # the policy folder changed
    again = run()
    assert again["p.json"] != first["p.json"] and again["reference.json"] == first["reference.json"]
    for changed in (run(ps=prompts[:1]), run(ps=prompts[:1], seed=3)):  # other prompts, then another seed
        assert changed["p.json"] != again["p.json"] and changed["reference.json"] != again["reference.json"]
        again = changed
