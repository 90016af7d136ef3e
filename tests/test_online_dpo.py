"""Online DPO (`alignkit online-dpo`): two samples per prompt from the current policy, the better one by the reward
chosen; the pairs it trains on are ordered by the reward and ties left out, and the reward rises."""

from __future__ import annotations

import pytest
import torch

from alignkit import OnlineDPOConfig, run_online_dpo
from alignkit.errors import ConfigError
from alignkit.train.config import load_config
from alignkit.train.online_dpo import preference_pairs
from test_rl import COMMON, metrics, rl_setup  # noqa: F401 (fixture)


def test_pairs_are_ordered_by_score_and_ties_left_out():
    scores = torch.tensor([0.1, 0.7, 0.5, -0.2, 0.3, 0.3, -1.0, 2.0])
    chosen, rejected = preference_pairs(scores)
    assert chosen.tolist() == [1, 2, 7] and rejected.tolist() == [0, 3, 6]


@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_online_dpo_raises_reward(rl_setup, tmp_path, loss):  # noqa: F811
    out = tmp_path / loss
    res = run_online_dpo(OnlineDPOConfig(model=rl_setup["policy"], prompts=rl_setup["prompts"],
                                         reward=rl_setup["reward"], output_dir=str(out), max_steps=12, batch_size=16,
                                         loss=loss, **COMMON))
    assert res.first_eval["kl"] == pytest.approx(0.0, abs=1e-5)
    assert res.eval["reward"] > res.first_eval["reward"] + 0.5, (res.first_eval, res.eval)
    train = [m for m in metrics(out) if m["split"] == "train"]
    assert len(train) == 12 and all(0 <= m["tied_share"] < 1 and m["score_margin"] > 0 for m in train)


def test_online_dpo_settings():
    base = dict(model="m", prompts="p", reward="vader", output_dir="o")
    assert OnlineDPOConfig(**base).beta == 0.1
    with pytest.raises(ConfigError, match="keeps β fixed"):
        load_config(OnlineDPOConfig, overrides={**base, "adaptive_kl": True})
    with pytest.raises(ConfigError, match="loss"):
        load_config(OnlineDPOConfig, overrides={**base, "loss": "simpo"})
