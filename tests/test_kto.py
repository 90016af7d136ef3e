"""KTO (`alignkit kto`): the unpaired data format and pairs split into it, the weights for unbalanced data, the
step's loss against the formula on log-probs from a plain forward, and training that separates good from bad."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignkit import KTOConfig, run_kto
from alignkit.data import load_kto
from alignkit.errors import DataError
from alignkit.models.load import load_causal_lm
from alignkit.train.kto import collate_kto, kto_weights, make_kto_step, with_kl_partners
from conftest import logps_by_hand, synthetic_pairs, write_jsonl


def unpaired(n: int, seed: int, good_share: float = 0.5) -> list[dict]:
    """KTO records from the synthetic pairs: the first `good_share` of them keep their chosen response
    (desirable), the rest their rejected one (undesirable)."""
    rows = synthetic_pairs(n, seed)
    cut = round(good_share * n)
    return [{"prompt": r["prompt"], "completion": r["chosen"] if i < cut else r["rejected"], "label": i < cut}
            for i, r in enumerate(rows)]


def test_kto_records_load_with_counts(tmp_path):
    path = write_jsonl(tmp_path / "k.jsonl", unpaired(10, 1, good_share=0.3))
    examples, report = load_kto(path)
    assert [e.desirable for e in examples] == [True] * 3 + [False] * 7
    assert report.counts == {"desirable": 3, "undesirable": 7}


def test_pairs_split_into_good_and_bad_responses(tmp_path):
    """A response's side is where it stands in more of its pairs; ties and label-0.5 pairs are left out, counted."""
    rows = [{"prompt": "p", "chosen": "x", "rejected": "y"}, {"prompt": "p", "chosen": "x", "rejected": "z"},
            {"prompt": "p", "chosen": "z", "rejected": "y"}, {"prompt": "q", "chosen": "u", "rejected": "v"},
            {"prompt": "q", "chosen": "u", "rejected": "w", "label": 0.5}]
    examples, report = load_kto(write_jsonl(tmp_path / "pairs.jsonl", rows))
    got = {(e.prompt, e.completion): e.desirable for e in examples}
    assert got == {("p", "x"): True, ("p", "y"): False, ("q", "u"): True, ("q", "v"): False}  # z: 1 win, 1 loss
    assert report.counts["unpaired_ties_dropped"] == 1 and report.counts["no_preference_dropped"] == 1
    assert report.loaded == 4 and report.counts["desirable"] == 2


@pytest.mark.parametrize(("record", "field", "message"), [
    ({"prompt": "p", "completion": "x", "label": 1}, "label", "must be true (desirable) or false (undesirable), got 1"),
    ({"prompt": "p", "completion": "x", "label": "yes"}, "label", "got str"),
    ({"prompt": "p", "completion": " ", "label": True}, "completion", "text is only whitespace"),
    ({"prompt": "p", "completion": None, "label": True}, "completion", "required field is null"),
])
def test_bad_kto_records_name_line_and_field(tmp_path, record, field, message):
    path = write_jsonl(tmp_path / "k.jsonl", [{"prompt": "a", "completion": "b", "label": False}, record])
    with pytest.raises(DataError) as e:
        load_kto(path, format="kto")
    assert str(e.value).startswith(f"{path}:2: field '{field}'") and message in str(e.value)


def test_kto_data_given_to_a_pair_trainer_is_named(tmp_path):
    from alignkit.data import load_pairs

    path = write_jsonl(tmp_path / "k.jsonl", unpaired(2, 1))
    with pytest.raises(DataError, match="unpaired data .* `alignkit kto`"):
        load_pairs(path)


@pytest.mark.parametrize(("n_d", "n_u", "given", "want"), [
    (50, 50, (None, None), (1.0, 1.0)),        # balanced: ratio 1
    (60, 50, (None, None), (1.0, 1.0)),        # ratio 1.2, inside [1, 4/3]
    (20, 80, (None, None), (4.0, 1.0)),        # few desirable: λ_D·20 = 80
    (90, 30, (None, None), (1 / 3, 1.0)),      # many desirable: λ_D·90 = 30
    (20, 80, (2.0, None), (2.0, 0.5)),         # λ_D given: λ_U set, 2·20 = λ_U·80
    (20, 80, (2.0, 3.0), (2.0, 3.0)),          # both given: kept
    (0, 10, (None, None), (1.0, 1.0)),         # one kind only: nothing to balance
])
def test_weights_for_unbalanced_data(n_d, n_u, given, want):
    got = kto_weights(n_d, n_u, *given)
    assert got == pytest.approx(want, rel=1e-12)


def test_kl_partners_have_another_prompt():
    from alignkit.data.records import KTOExample

    examples = [KTOExample(f"p{i % 3}", f"c{i}", i % 2 == 0) for i in range(9)]
    pairs = with_kl_partners(examples, seed=0)
    assert [p.chosen for p in pairs] == [e.completion for e in examples]
    for e, p in zip(examples, pairs, strict=True):
        partner = examples[int(p.rejected[1:])]
        assert partner.prompt != e.prompt
    lone = with_kl_partners([KTOExample("p", "a", True), KTOExample("p", "b", False)], seed=0)
    assert [p.rejected for p in lone] == ["a", "b"]  # one prompt only: its own completion


ITEMS = [{"prompt": [5, 6, 7, 8], "chosen": [9, 10, 11] * 4, "rejected": [12, 13] * 3, "desirable": True},
         {"prompt": [14, 15], "chosen": [16, 17, 18, 19], "rejected": [20] * 9, "desirable": False},
         {"prompt": [21, 22, 23], "chosen": [24, 25], "rejected": [26, 27, 28], "desirable": False}]


@pytest.mark.parametrize("packed", [True, False])
def test_step_is_the_formula_on_plain_forward_logprobs(tiny_model, packed):
    """Reference log-probs are given (as precomputed), the policy's are its own: the loss, z and the rewards must be
    the paper's formula on log-probs from a plain forward, written out here in float64; packed or one sequence per
    row."""
    model = load_causal_lm(tiny_model).eval()
    ref = [-30.0, -12.0, -9.0]
    kl_ref = [-20.0, -25.0, -11.0]
    items = [{**it, "ref_chosen": r, "ref_rejected": k} for it, r, k in zip(ITEMS, ref, kl_ref, strict=True)]
    batch = collate_kto(items, 0, packed=packed, varlen=True)
    cfg = KTOConfig(model="m", data="d", output_dir="o", beta=0.1)
    loss, metrics = make_kto_step(cfg, (1.5, 0.5))(model, batch)
    loss.backward()
    got_grad = {n: p.grad.clone() for n, p in model.named_parameters()}
    logps = logps_by_hand(model, items)
    logp, kl_logp = logps[:3], logps[3:]
    z = max(0.0, sum(a - b for a, b in zip(kl_logp, kl_ref, strict=True)) / 3)

    def sig(x):
        return 1 / (1 + math.exp(-x))

    want = []
    for it, lp, r in zip(items, logp, ref, strict=True):
        if it["desirable"]:
            want.append(1.5 * (1 - sig(0.1 * (lp - r - z))))
        else:
            want.append(0.5 * (1 - sig(0.1 * (z - (lp - r)))))
    # float32 log-probs of ~30 tokens: ~1e-5 absolute; the loss is within a few 1e-7 of its float64 value
    assert float(loss.detach()) == pytest.approx(sum(want) / 3, abs=1e-5)
    assert float(metrics["kl"]) == pytest.approx(z, abs=1e-4)
    assert float(metrics["reward_desirable"]) == pytest.approx(0.1 * (logp[0] - ref[0]), abs=1e-5)
    # the gradient: the same formula through plain forwards of the completions alone, z a constant (the KL pairs
    # carry no gradient)
    model.zero_grad()
    total = 0
    for it, r in zip(items, ref, strict=True):
        ids = torch.tensor([it["prompt"] + it["chosen"]])
        n = len(it["prompt"])
        lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)[torch.arange(n - 1, ids.shape[1] - 1),
                                                                         ids[0, n:]].sum()
        if it["desirable"]:
            total = total + 1.5 * (1 - torch.sigmoid(0.1 * (lp - r - z)))
        else:
            total = total + 0.5 * (1 - torch.sigmoid(0.1 * (z - (lp - r))))
    (total / 3).backward()
    for name, p in model.named_parameters():  # float32 sums in two orders: relative 1e-4 of the largest entry
        torch.testing.assert_close(got_grad[name], p.grad, rtol=0, atol=1e-4 * float(p.grad.abs().max()) + 1e-9)


@pytest.mark.parametrize("good_share", [0.5, 0.25])
def test_kto_learns_to_separate_good_from_bad(tiny_model, tmp_path, good_share):
    """Unpaired examples only (the pairs are never shown): the held-out desirable responses rise above the
    undesirable ones in β·log-ratio, balanced or 1:3 (weighted)."""
    data = write_jsonl(tmp_path / "k.jsonl", unpaired(160, 5, good_share))
    held = write_jsonl(tmp_path / "held.jsonl", unpaired(40, 6))
    out = tmp_path / "kto"
    res = run_kto(KTOConfig(model=tiny_model, data=data, eval_data=held, output_dir=str(out), batch_size=8, epochs=3,
                            learning_rate=1e-3, progress=False))
    first = res.first_eval["reward_desirable"] - res.first_eval["reward_undesirable"]
    last = res.eval["reward_desirable"] - res.eval["reward_undesirable"]
    assert abs(first) < 1e-4 and last > 1.0, (res.first_eval, res.eval)
    assert res.eval["loss"] < res.first_eval["loss"] - 0.05
    info = json.loads((out / "run_info.json").read_text())["kto"]
    n_d = round(good_share * 160)
    assert info["desirable"] == n_d and info["desirable_weight"] == pytest.approx((160 - n_d) / n_d if n_d < 80 else 1)
