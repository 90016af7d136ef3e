"""SimPO and ORPO (`alignkit dpo --loss simpo|orpo`): no reference model is loaded or computed, the step's loss is
the formula on the policy's own log-probs (computed here by a plain forward), and training orders the pairs."""

from __future__ import annotations

import pytest
import torch

from alignkit import DPOConfig, run_dpo
from alignkit.data.collate import collate_pairs
from alignkit.errors import ConfigError
from alignkit.losses import orpo_loss, simpo_loss
from alignkit.models.load import load_causal_lm
from alignkit.train.config import load_config
from alignkit.train.preference import make_reference_free_step
from conftest import logps_by_hand, synthetic_pairs, write_jsonl

ITEMS = [{"prompt": [5, 6, 7, 8], "chosen": [9, 10, 11] * 4, "rejected": [12, 13] * 3},
         {"prompt": [14, 15], "chosen": [16, 17, 18, 19], "rejected": [20] * 9}]


def _by_hand(model):
    """Summed response log-probs and lengths, chosen then rejected, from one plain forward per sequence."""
    lengths = [len(it[side]) for side in ("chosen", "rejected") for it in ITEMS]
    return torch.tensor(logps_by_hand(model, ITEMS)), torch.tensor(lengths)


@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_step_is_the_formula_on_the_policys_logprobs(tiny_model, loss):
    model = load_causal_lm(tiny_model).eval()
    cfg = DPOConfig(model="m", data="d", output_dir="o", loss=loss)
    assert cfg.beta == (2.0 if loss == "simpo" else 0.1)  # SimPO's own scale unless --beta is given
    with torch.no_grad():
        got, metrics = make_reference_free_step(cfg)(model, collate_pairs(ITEMS, 0))
    logps, lengths = _by_hand(model)
    c, r, nc, nr = logps[:2], logps[2:], lengths[:2], lengths[2:]
    if loss == "simpo":
        want = simpo_loss(c, r, nc, nr, beta=2.0, gamma=1.0).mean()
    else:
        ratio, sft = orpo_loss(c, r, nc, nr, weight=0.1)
        want = (ratio + sft).mean()
        assert float(metrics["sft_loss"]) == pytest.approx(float(sft.mean()), abs=1e-4)
    assert float(got) == pytest.approx(float(want), abs=1e-4)


@pytest.mark.parametrize("loss", ["simpo", "orpo"])
def test_simpo_and_orpo_learn_without_a_reference(tiny_model, tmp_path, loss, monkeypatch):
    from alignkit.train import preference

    monkeypatch.setattr(preference, "precompute_reference", None)  # called: a TypeError
    data = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(120, 5))
    res = run_dpo(DPOConfig(model=tiny_model, data=data, output_dir=str(tmp_path / loss), loss=loss, batch_size=8,
                            epochs=2, learning_rate=1e-3, eval_fraction=0.25, progress=False))
    assert res.first_eval["margin"] < res.eval["margin"] - 0.3, (res.first_eval, res.eval)
    assert res.eval["accuracy"] >= 0.9 and res.first_eval["accuracy"] < 0.8
    assert not (tmp_path / loss / "reference").exists()


def test_reference_free_losses_refuse_a_reference_model():
    with pytest.raises(ConfigError, match="loss 'orpo' uses no reference model; drop --reference-model"):
        load_config(DPOConfig, overrides=dict(model="m", data="d", output_dir="o", loss="orpo", reference_model="r"))
