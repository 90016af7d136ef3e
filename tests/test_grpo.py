"""GRPO (`alignkit grpo`): groups of G samples per prompt, group-relative advantages, the clipped per-token
surrogate; each loss type raises the reward of a policy that starts out writing positive and negative reviews
about equally often, and the advantages the step trains on are the group-centred rewards."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit import GRPOConfig, run_grpo
from alignkit.errors import ConfigError
from alignkit.train.config import load_config
from test_rl import COMMON, rl_setup  # noqa: F401 (fixture)


@pytest.mark.parametrize(("loss_type", "extra"), [("grpo", {}), ("dr_grpo", {}), ("dapo", {"epsilon_high": 0.28})])
def test_grpo_raises_reward(rl_setup, tmp_path, loss_type, extra):  # noqa: F811
    res = run_grpo(GRPOConfig(model=rl_setup["policy"], prompts=rl_setup["prompts"], reward=rl_setup["reward"],
                              output_dir=str(tmp_path / loss_type), max_steps=12, batch_size=8, num_generations=4,
                              loss_type=loss_type, **extra, **COMMON))
    assert res.eval["reward"] > res.first_eval["reward"] + 0.5, (loss_type, res.first_eval, res.eval)
    lines = [json.loads(x) for x in (tmp_path / loss_type / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["split"] == "train"]
    assert len(train) == 12 and all(0 <= m["flat_groups"] <= 1 for m in train)


def test_grpo_trains_on_group_centred_rewards(rl_setup, tmp_path, monkeypatch):  # noqa: F811
    """The advantages handed to the loss are the rewards minus their group's mean, over the group's std."""
    from alignkit.train import grpo

    seen = []
    real = grpo.group_advantages

    def spy(rewards, group, *, scale=True, eps=1e-4):
        out = real(rewards, group, scale=scale, eps=eps)
        seen.append((rewards.clone(), out, scale))
        return out

    monkeypatch.setattr(grpo, "group_advantages", spy)
    run_grpo(GRPOConfig(model=rl_setup["policy"], prompts=rl_setup["prompts"], reward=rl_setup["reward"],
                        output_dir=str(tmp_path / "g"), max_steps=2, batch_size=4, num_generations=3, **COMMON))
    assert len(seen) == 2
    for rewards, adv, scale in seen:
        assert scale and rewards.shape == (12,)
        g = rewards.view(4, 3)
        want = (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)
        torch.testing.assert_close(adv, want.reshape(-1))


def test_grpo_settings():
    base = dict(model="m", prompts="p", reward="vader", output_dir="o")
    assert GRPOConfig(**base).beta == 0.0 and GRPOConfig(**base).scaled
    assert not GRPOConfig(**base, loss_type="dr_grpo").scaled
    with pytest.raises(ConfigError, match="num_generations"):
        load_config(GRPOConfig, overrides={**base, "num_generations": 1})
    assert GRPOConfig(**base, reference="none").reference == "none"
    with pytest.raises(ConfigError, match="reference 'none' leaves no KL"):
        load_config(GRPOConfig, overrides={**base, "reference": "none", "beta": 0.05})


def test_grpo_without_reference_trains_as_with_one(rl_setup, tmp_path, monkeypatch):  # noqa: F811
    """At β = 0 the reference only feeds the logged KL: `--reference none` loads no copy and logs no KL, and its
    run samples and trains exactly as the run with a copy (same rewards and losses, step by step)."""
    from alignkit.train import online

    copies = []
    real = online.make_reference

    def spy(cfg, policy):
        copies.append(real(cfg, policy))
        return copies[-1]

    monkeypatch.setattr(online, "make_reference", spy)
    runs = {}
    for ref in ("copy", "none"):
        out = tmp_path / ref
        run_grpo(GRPOConfig(model=rl_setup["policy"], prompts=rl_setup["prompts"], reward=rl_setup["reward"],
                            output_dir=str(out), max_steps=3, batch_size=4, num_generations=4, mini_batch_size=8,
                            reference=ref, eval_samples=8, **COMMON))
        runs[ref] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert copies[0] is not None and copies[1] is None
    assert all("kl" in m for m in runs["copy"]) and not any("kl" in m or "kl_k3" in m for m in runs["none"])
    assert [m["split"] for m in runs["copy"]] == [m["split"] for m in runs["none"]]
    for a, b in zip(runs["copy"], runs["none"], strict=True):
        for key in ("reward", "loss"):
            if key in a:  # the same sampled tokens and updates: equal up to float rounding
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (key, a, b)


def test_rollout_kl_is_not_overwritten_by_the_loss_kl(rl_setup, tmp_path):  # noqa: F811
    """With β > 0 the loss reports its per-token k3 as `kl_penalty`; `kl` stays the rollout's sequence KL, which is 0
    at the first step (sampled before any update, the policy is the reference) while the penalty is not (4 updates
    of 8 sequences, the later ones after the policy moved)."""
    out = tmp_path / "g"
    run_grpo(GRPOConfig(model=rl_setup["policy"], prompts=rl_setup["prompts"], reward=rl_setup["reward"],
                        output_dir=str(out), max_steps=1, batch_size=8, num_generations=4, mini_batch_size=8,
                        beta=0.05, eval_samples=0, **COMMON))
    first = next(json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x)
    assert first["kl"] == pytest.approx(0.0, abs=1e-5) and first["kl_penalty"] > 1e-4, first
