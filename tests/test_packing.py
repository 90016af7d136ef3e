"""Padding-free packing: the layout by hand, and packed vs padded log-probs, rewards, losses, gradients and
training curves in float32 (they must agree to 1e-5)."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.data.collate import (
    collate_pairs,
    collate_rankings,
    collate_sft,
    pack_pairs,
    pack_rankings,
    pack_sft,
    pack_units,
)
from alignkit.losses import preference_loss
from alignkit.models.logprobs import (
    packed_attention_mask,
    packed_reward_scores,
    packed_sequence_logprobs,
    packing_supported,
    reward_scores,
    sequence_logprobs,
)

PAD = 0
# prompts and responses of different lengths; the last pair has an empty prompt
ITEMS = [
    {"prompt": [5, 17, 30, 44, 51], "chosen": [60, 71, 82], "rejected": [61, 62], "label": 1.0},
    {"prompt": [9, 13], "chosen": [100, 101, 102, 103, 104, 105, 106], "rejected": [7, 8, 9, 10], "label": 0.8},
    {"prompt": [21, 22, 23, 24, 25, 26, 27, 28], "chosen": [40], "rejected": [41, 42, 43, 44, 45, 46], "label": 0.6},
    {"prompt": [], "chosen": [70, 71, 72], "rejected": [73, 74], "label": 1.0},
]
LAYOUTS = [dict(pack_tokens=0, shared_prompt=True), dict(pack_tokens=0, shared_prompt=False),
           dict(pack_tokens=24, shared_prompt=True), dict(pack_tokens=1000, shared_prompt=False)]


def test_pack_units_layout_by_hand():
    # unit 0: prompt [1, 2] shared by responses [3, 4] (sequence 0) and [5] (sequence 1); unit 1: [6, 7, 8]
    # with its last two tokens scored (sequence 2). Budget 8: unit 0 (5 tokens) and unit 1 (3) share a row.
    units = [[([1, 2], [0, 0], None, None), ([3, 4], [1, 1], 0, 0), ([5], [1], 0, 1)],
             [([6, 7, 8], [0, 1, 1], None, 2)]]
    b = pack_units(units, PAD, pack_tokens=8)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 2, 0, 1, 2]]  # the second response restarts after the prompt
    assert b["segment"].tolist() == [[0, 0, 1, 1, 2, 3, 3, 3]]
    assert b["parent"].tolist() == [[0, 0, 0, 0, 0, 3, 3, 3]]
    # token 3 is predicted by the prompt's last token (1), 4 by 3 (col 2), 5 by the prompt's last token again
    assert b["score_index"].tolist() == [1, 2, 1, 5, 6]
    assert b["score_label"].tolist() == [3, 4, 5, 7, 8]
    assert b["score_seq"].tolist() == [0, 0, 1, 2, 2]
    assert b["last_index"].tolist() == [3, 4, 7]
    assert b["response_tokens"].tolist() == [2, 1, 2]
    mask = packed_attention_mask(b["segment"], b["parent"], eager=False, dtype=torch.float32)[0, 0].int()
    assert mask.tolist() == [
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0, 0],  # the second response sees the prompt, not the first response
        [0, 0, 0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1, 1, 1],
    ]
    # a budget smaller than a unit: one unit per row, padded to the longest unit, padding sees only itself
    b = pack_units(units, PAD, pack_tokens=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, PAD, PAD]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert b["score_index"].tolist() == [1, 2, 1, 5 + 0, 5 + 1]
    mask = packed_attention_mask(b["segment"], b["parent"], eager=True, dtype=torch.float32)
    assert mask[1, 0, 3].tolist() == [torch.finfo(torch.float32).min] * 3 + [0.0, torch.finfo(torch.float32).min]


def test_packing_removes_padding():
    padded = collate_pairs(ITEMS, PAD)
    packed = pack_pairs(ITEMS, PAD, pack_tokens=1000, shared_prompt=True)
    real = sum(2 * len(it["prompt"]) + len(it["chosen"]) + len(it["rejected"]) for it in ITEMS)
    assert padded["input_ids"].numel() == 8 * 14 and int(padded["attention_mask"].sum()) == real
    # one row; the three non-empty prompts are laid out once
    assert packed["input_ids"].shape == (1, real - 15)
    assert int(packed["attention_mask"].sum()) == real - 15


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_packed_pair_logprobs_and_gradients_match_padded(causal_lm, layout):
    padded = collate_pairs(ITEMS, PAD)
    packed = pack_pairs(ITEMS, PAD, **layout)

    def run(fn):
        causal_lm.zero_grad()
        logps, tok = fn()
        b = len(ITEMS)
        loss = preference_loss("dpo", logps[:b], logps[b:], torch.zeros(b), torch.zeros(b), beta=0.1).mean()
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in causal_lm.parameters() if p.grad is not None])
        return logps.detach(), tok.detach(), loss.detach(), grads

    lp_pad, tok_pad, loss_pad, g_pad = run(lambda: sequence_logprobs(
        causal_lm, padded["input_ids"], padded["attention_mask"], padded["response_mask"], return_tokens=True))
    lp_pack, tok_pack, loss_pack, g_pack = run(lambda: packed_sequence_logprobs(causal_lm, packed, return_tokens=True))
    # every scored token, in the same order (sequence by sequence, left to right)
    want_tok = tok_pad[padded["response_mask"][:, 1:].bool() & padded["attention_mask"][:, :-1].bool()]
    order = torch.argsort(packed["score_seq"], stable=True)
    torch.testing.assert_close(tok_pack[order], want_tok, atol=1e-5, rtol=0)
    torch.testing.assert_close(lp_pack, lp_pad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_pack, loss_pad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g_pack, g_pad, atol=1e-5, rtol=1e-4)
    assert packed["response_tokens"].tolist() == padded["response_mask"].sum(-1).tolist()


def test_eager_attention_packs_exactly(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="eager").eval()
    padded = collate_pairs(ITEMS, PAD)
    with torch.no_grad():
        want = sequence_logprobs(model, padded["input_ids"], padded["attention_mask"], padded["response_mask"])
        got = packed_sequence_logprobs(model, pack_pairs(ITEMS, PAD, pack_tokens=1000))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_packed_sft_loss_matches_padded(causal_lm):
    from alignkit.train.sft import sft_step

    items = [{"input_ids": it["prompt"] + it["chosen"], "response_mask": [0] * len(it["prompt"]) + [1] * len(it["chosen"])}
             for it in ITEMS]
    losses, grads = [], []
    for batch in (collate_sft(items, PAD), pack_sft(items, PAD, pack_tokens=16)):
        causal_lm.zero_grad()
        loss, _ = sft_step(causal_lm, batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in causal_lm.parameters() if p.grad is not None]))
    torch.testing.assert_close(losses[1], losses[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sft_weight", [0.0, 0.5])
def test_packed_coh_loss_matches_padded(causal_lm, sft_weight):
    from alignkit.train.coh import make_coh_step, make_collate
    from alignkit.train.config import CoHConfig

    # CoH rows: prompt, feedback phrase (not trained), response (trained); one item also has an SFT row
    items = [{"rows": [(it["prompt"] + [3, 4] + it["chosen"], [0] * (len(it["prompt"]) + 2) + [1] * len(it["chosen"])),
                       (it["prompt"] + [5] + it["rejected"], [0] * (len(it["prompt"]) + 1) + [1] * len(it["rejected"]))],
              "sft": (it["prompt"] + it["chosen"], [0] * len(it["prompt"]) + [1] * len(it["chosen"])) if i == 1 else None}
             for i, it in enumerate(ITEMS)]
    step = make_coh_step(CoHConfig(model="m", data="d", output_dir="o", sft_weight=sft_weight))
    results = []
    for collate in (make_collate(PAD), make_collate(PAD, pack_tokens=20)):
        batch = collate(items)
        causal_lm.zero_grad()
        loss, metrics = step(causal_lm, batch)
        loss.backward()
        results.append((loss.detach(), metrics, torch.cat([p.grad.flatten() for p in causal_lm.parameters()
                                                           if p.grad is not None])))
    (loss_pad, m_pad, g_pad), (loss_pack, m_pack, g_pack) = results
    assert "segment" in make_collate(PAD, pack_tokens=20)(items)
    torch.testing.assert_close(loss_pack, loss_pad, atol=1e-6, rtol=1e-5)
    assert m_pack.keys() == m_pad.keys() == {"coh_loss", "sft_loss"}
    for k in m_pad:
        torch.testing.assert_close(m_pack[k], m_pad[k], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g_pack, g_pad, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def reward_model(request, tiny_model, tiny_gpt2):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(1)  # the score head is newly initialised
    path = tiny_model if request.param == "llama" else tiny_gpt2
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32).eval()


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_packed_rewards_match_padded(reward_model, layout):
    with torch.no_grad():
        padded = collate_pairs(ITEMS, PAD)
        want = reward_scores(reward_model, padded["input_ids"], padded["attention_mask"])
        got = packed_reward_scores(reward_model, pack_pairs(ITEMS, PAD, **layout))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        rankings = [{"prompt": it["prompt"], "responses": [it["chosen"], it["rejected"], it["chosen"][:1]]}
                    for it in ITEMS[:3]] + [{"prompt": [3, 4], "responses": [[5, 6]] * 2}]
        padded = collate_rankings(rankings, PAD)
        packed = pack_rankings(rankings, PAD, **layout)
        assert packed["rank_index"].tolist() == padded["rank_index"].tolist()
        want = reward_scores(reward_model, padded["input_ids"], padded["attention_mask"])
        torch.testing.assert_close(packed_reward_scores(reward_model, packed), want, atol=1e-5, rtol=1e-5)


def test_packing_supported(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert packing_supported(model) is None
    model.config._attn_implementation = "flash_attention_2"
    assert "flash_attention_2" in packing_supported(model)
    model.config._attn_implementation = "sdpa"
    model.config.sliding_window = 4
    assert packing_supported(model) == "sliding-window attention"


def _curve(out) -> list[float]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [m["loss"] for m in lines if m["split"] == "train"]


@pytest.mark.parametrize("method", ["sft", "rm", "dpo", "coh"])
def test_training_curve_same_with_and_without_packing(method, tiny_model, pair_files, sft_files, tmp_path):
    """Four optimizer steps on a fixed seed: packed (shared prompt or not; flat with attention per sequence, or
    in rows with the block mask) and padded runs give the same loss curve."""
    from alignkit import CoHConfig, DPOConfig, RewardConfig, SFTConfig, run_coh, run_dpo, run_reward, run_sft

    run, cls = {"sft": (run_sft, SFTConfig), "rm": (run_reward, RewardConfig), "dpo": (run_dpo, DPOConfig),
                "coh": (run_coh, CoHConfig)}[method]
    data = sft_files[0] if method == "sft" else pair_files[0]
    curves = {}
    for name, kw in {"padded": dict(packing=False), "packed": dict(packing=True, pack_tokens=256),
                     "separate": dict(packing=True, shared_prompt=False),
                     "masked": dict(packing=True, pack_tokens=256, varlen=False)}.items():
        if method in ("sft", "coh") and name == "separate":
            continue
        out = tmp_path / name
        run(cls(model=tiny_model, data=data, output_dir=str(out), max_steps=4, batch_size=8, learning_rate=1e-3,
                eval_fraction=0.0, progress=False, **kw))
        curves[name] = _curve(out)
    assert len(curves["padded"]) == 4
    assert curves["padded"][0] != curves["padded"][-1]  # the model moved
    for name, curve in curves.items():
        assert curve == pytest.approx(curves["padded"], abs=1e-5, rel=1e-5), name


def test_fused_adamw_matches_the_reference_loop(causal_lm):
    """The training loop's fused AdamW (CPU kernel) takes the same steps as the per-tensor implementation."""
    import copy

    models = [copy.deepcopy(causal_lm).train() for _ in range(2)]
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01, fused=f) for m, f in zip(models, (False, True), strict=True)]
    batch = collate_pairs(ITEMS, PAD)
    for _ in range(3):
        for m, opt in zip(models, opts, strict=True):
            loss = -sequence_logprobs(m, batch["input_ids"], batch["attention_mask"], batch["response_mask"]).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
    # Adam divides by sqrt(v) + eps, so weights whose gradients are ~0 may differ by float noise in the update:
    # the two runs must agree to 2% of the distance the weights moved
    with torch.no_grad():
        moved = max(float((p0 - p).abs().max()) for p0, p in zip(models[0].parameters(), causal_lm.parameters(),
                                                                 strict=True))
        apart = max(float((p0 - p1).abs().max()) for p0, p1 in zip(models[0].parameters(), models[1].parameters(),
                                                                  strict=True))
    assert moved > 1e-3  # the steps were taken
    assert apart < 0.02 * moved, (apart, moved)


def test_fused_gelu_matches_gpt2_activation(tiny_gpt2):
    """Loading swaps GPT-2's Python-arithmetic GELU for the one-kernel version: same log-probs and gradients."""
    from transformers import AutoModelForCausalLM

    from alignkit.models.load import fuse_activations, load_causal_lm

    plain = AutoModelForCausalLM.from_pretrained(tiny_gpt2, dtype=torch.float32)
    fused = load_causal_lm(tiny_gpt2)
    assert fuse_activations(AutoModelForCausalLM.from_pretrained(tiny_gpt2)) == 2  # one per layer
    assert fuse_activations(fused) == 0  # already swapped on load
    assert "NewGELUActivation" not in str(fused) and "NewGELUActivation" in str(plain)
    batch = collate_pairs(ITEMS, PAD)
    grads = []
    for m in (plain, fused):
        m.zero_grad()
        lp = sequence_logprobs(m, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        lp.sum().backward()
        grads.append((lp.detach(), torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-5, rtol=1e-4)
