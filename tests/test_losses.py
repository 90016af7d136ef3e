"""Tests for alignkit.losses against numbers computed by hand with plain ``math``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alignkit import losses
from alignkit.losses import (
    bradley_terry_loss,
    cdpo_loss,
    coh_loss,
    dpo_loss,
    gdpo_loss,
    gipo_loss,
    hinge_loss,
    implicit_accuracy,
    implicit_rewards,
    ipo_loss,
    preference_loss,
    ranking_loss,
    sft_loss,
    token_logprobs,
)

LOG2 = math.log(2.0)


def softplus(x: float) -> float:
    """log(1 + e^x), i.e. −log σ(−x)."""
    return math.log1p(math.exp(x))


def neg_logsig(x: float) -> float:
    """−log σ(x) = log(1 + e^{−x})."""
    return softplus(-x)


def close(t: torch.Tensor, expected, tol: float = 1e-5) -> bool:
    exp = torch.as_tensor(expected, dtype=torch.float32)
    return torch.allclose(t.detach().float(), exp, rtol=tol, atol=tol)


def logps(values):
    return torch.tensor(values, dtype=torch.float32)


# --------------------------------------------------------------------------------------------------
# Direct preference losses
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_values_at_policy_equal_reference(beta):
    torch.manual_seed(0)
    chosen, rejected = -torch.rand(5) * 50, -torch.rand(5) * 50
    args = (chosen, rejected, chosen.clone(), rejected.clone())
    ones = torch.ones(5)

    assert close(preference_loss("dpo", *args, beta=beta), LOG2 * ones)
    for eps in (0.0, 0.1, 0.3, 0.5):
        assert close(preference_loss("cdpo", *args, beta=beta, epsilon=eps), LOG2 * ones)
    assert close(preference_loss("cdpo", *args, beta=beta, epsilon=torch.rand(5) * 0.5), LOG2 * ones)
    for p in (None, 0.5, 0.7, 1.0):
        label = None if p is None else torch.full((5,), p)
        assert close(preference_loss("gdpo", *args, beta=beta, label=label), LOG2 * ones)
        assert close(preference_loss("cdpo", *args, beta=beta, label=label), LOG2 * ones)
    assert close(preference_loss("ipo", *args, beta=beta), ones / (4 * beta**2))
    assert close(preference_loss("hinge", *args, beta=beta), ones)
    gipo_half = preference_loss("gipo", *args, beta=beta, label=torch.full((5,), 0.5))
    assert close(gipo_half, ones / (4 * beta**2))


def test_gdpo_is_dpo_and_gipo_is_ipo_at_hard_label():
    torch.manual_seed(1)
    h = torch.randn(16) * 10
    for beta in (0.1, 0.3):
        assert torch.allclose(gdpo_loss(h, beta, torch.ones(16)), dpo_loss(h, beta))
        assert torch.allclose(gdpo_loss(h, beta, None), dpo_loss(h, beta))
        assert torch.allclose(gipo_loss(h, beta, torch.ones(16)), ipo_loss(h, beta))
        assert torch.allclose(gipo_loss(h, beta, 1.0), ipo_loss(h, beta))


def test_gdpo_gradient_is_zero_at_half_label():
    torch.manual_seed(2)
    pc, pr = (-torch.rand(6) * 30).requires_grad_(), (-torch.rand(6) * 30).requires_grad_()
    rc, rr = -torch.rand(6) * 30, -torch.rand(6) * 30
    loss = preference_loss("gdpo", pc, pr, rc, rr, beta=0.1, label=torch.full((6,), 0.5))
    loss.sum().backward()
    assert torch.equal(pc.grad, torch.zeros(6))
    assert torch.equal(pr.grad, torch.zeros(6))
    assert close(loss, [LOG2] * 6)


# pc=-10, rc=-11 (chosen ratio +1); pr=-14, rr=-13 (rejected ratio -1): h = 1 - (-1) = 2.
H2_ARGS = (logps([-10.0]), logps([-14.0]), logps([-11.0]), logps([-13.0]))


@pytest.mark.parametrize(
    "kind, extra, expected",
    [
        ("dpo", {}, math.log(1 + math.exp(-0.2))),
        ("cdpo", {"epsilon": 0.2}, 0.8 * math.log(1 + math.exp(-0.2)) + 0.2 * math.log(1 + math.exp(0.2))),
        ("cdpo", {"epsilon": 0.0}, math.log(1 + math.exp(-0.2))),
        ("ipo", {}, (2.0 - 1 / (2 * 0.1)) ** 2),  # (2 - 5)^2 = 9
        ("hinge", {}, 1 - 0.1 * 2.0),  # 0.8
        ("gdpo", {"label": torch.tensor([0.75])}, math.log(1 + math.exp(-0.1))),  # 2p-1 = 0.5
        ("gipo", {"label": torch.tensor([0.75])}, (0.5 * 2.0 - 5.0) ** 2),  # 16
        ("gdpo", {}, math.log(1 + math.exp(-0.2))),
        ("gipo", {}, 9.0),
    ],
)
def test_hand_values_beta_0_1_h_2(kind, extra, expected):
    loss = preference_loss(kind, *H2_ARGS, beta=0.1, **extra)
    assert loss.shape == (1,)
    assert loss.dtype == torch.float32
    assert close(loss, [expected])


def test_each_function_hand_values_vector():
    h = torch.tensor([2.0, -3.0, 20.0, 0.5])
    beta = 0.25
    assert close(dpo_loss(h, beta), [neg_logsig(beta * x) for x in h.tolist()])
    assert close(
        cdpo_loss(h, beta, 0.1),
        [0.9 * neg_logsig(beta * x) + 0.1 * neg_logsig(-beta * x) for x in h.tolist()],
    )
    assert close(ipo_loss(h, beta), [(x - 2.0) ** 2 for x in h.tolist()])
    assert close(hinge_loss(h, beta), [max(0.0, 1 - beta * x) for x in h.tolist()])  # 0.5, 1.75, 0, 0.875
    p = [0.5, 0.6, 0.9, 1.0]
    label = torch.tensor(p)
    assert close(
        gdpo_loss(h, beta, label),
        [neg_logsig(beta * (2 * q - 1) * x) for q, x in zip(p, h.tolist(), strict=True)],
    )
    assert close(
        gipo_loss(h, beta, label), [((2 * q - 1) * x - 2.0) ** 2 for q, x in zip(p, h.tolist(), strict=True)]
    )


def test_cdpo_soft_label_uses_one_minus_p():
    pc, pr, rc, rr = logps([-5.0, -8.0]), logps([-9.0, -6.0]), logps([-6.0, -7.0]), logps([-9.5, -6.5])
    h = [(-5.0 + 6.0) - (-9.0 + 9.5), (-8.0 + 7.0) - (-6.0 + 6.5)]  # [0.5, -1.5]
    p = [0.8, 0.6]
    beta = 0.5
    expected = [q * neg_logsig(beta * x) + (1 - q) * neg_logsig(-beta * x) for q, x in zip(p, h, strict=True)]
    loss = preference_loss("cdpo", pc, pr, rc, rr, beta=beta, label=torch.tensor(p))
    assert close(loss, expected)
    assert torch.allclose(loss, cdpo_loss(torch.tensor(h), beta, 1 - torch.tensor(p)))
    # hard labels given as a tensor of ones: no smoothing
    hard = preference_loss("cdpo", pc, pr, rc, rr, beta=beta, label=torch.ones(2))
    assert close(hard, [neg_logsig(beta * x) for x in h])


def test_cdpo_label_and_epsilon_together_is_an_error():
    with pytest.raises(ValueError, match="either"):
        preference_loss("cdpo", *H2_ARGS, beta=0.1, label=torch.tensor([0.8]), epsilon=0.1)


def test_soft_label_ignored_by_dpo_ipo_hinge():
    label = torch.tensor([0.6])
    for kind in ("dpo", "ipo", "hinge"):
        assert torch.equal(
            preference_loss(kind, *H2_ARGS, beta=0.1, label=label), preference_loss(kind, *H2_ARGS, beta=0.1)
        )


def test_dpo_gradient_sign():
    pc = logps([-10.0, -20.0]).requires_grad_()
    pr = logps([-12.0, -15.0]).requires_grad_()
    rc, rr = logps([-11.0, -19.0]), logps([-12.5, -14.0])
    loss = preference_loss("dpo", pc, pr, rc, rr, beta=0.1)
    loss.sum().backward()
    assert (pc.grad < 0).all()  # raising the chosen log-prob lowers the loss
    assert (pr.grad > 0).all()  # raising the rejected log-prob raises it
    with torch.no_grad():
        higher = preference_loss("dpo", pc + 0.5, pr, rc, rr, beta=0.1)
    assert (higher < loss.detach()).all()


def test_half_precision_inputs_give_float32():
    args = tuple(t.to(torch.bfloat16) for t in H2_ARGS)
    for kind in losses.PREFERENCE_LOSSES:
        out = preference_loss(kind, *args, beta=0.1)
        assert out.dtype == torch.float32


def test_unknown_kind_and_bad_beta():
    with pytest.raises(ValueError) as info:
        preference_loss("orpo", *H2_ARGS, beta=0.1)
    for kind in ("dpo", "cdpo", "ipo", "hinge", "gdpo", "gipo"):
        assert kind in str(info.value)
    with pytest.raises(ValueError, match="beta"):
        preference_loss("ipo", *H2_ARGS, beta=0.0)
    with pytest.raises(ValueError, match="shape"):
        preference_loss("dpo", logps([1.0, 2.0]), *H2_ARGS[1:], beta=0.1)


def test_implicit_rewards():
    pol = logps([-10.0, -4.0]).requires_grad_()
    ref = logps([-12.0, -3.0])
    r = implicit_rewards(pol, ref, 0.5)
    assert close(r, [1.0, -0.5])
    assert not r.requires_grad


def test_implicit_accuracy_hand_values():
    # pair 0: h = (−10 + 11) − (−12 + 12) = 1, τ = 1e-4 · 45 = 0.0045 → counted
    # pair 1: h = (−10 + 10.0005) − (−12 + 11.9995) = 0.001 < τ = 1e-4 · 44 = 0.0044 → a tie, not counted
    # pair 2: h = −1 (the policy prefers the rejected response) → not counted
    # pair 3: h = 0 exactly → not counted
    pc, pr = torch.tensor([-10.0, -10.0, -12.0, -5.0]), torch.tensor([-12.0, -12.0, -10.0, -5.0])
    rc, rr = torch.tensor([-11.0, -10.0005, -12.0, -5.0]), torch.tensor([-12.0, -11.9995, -11.0, -5.0])
    assert implicit_accuracy(pc, pr, rc, rr).tolist() == [1.0, 0.0, 0.0, 0.0]
    # the band scales with the log-probs: a wider band turns pair 0 into a tie (τ = 0.03 · 45 = 1.35 > 1)
    assert implicit_accuracy(pc, pr, rc, rr, band=0.03).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_implicit_accuracy_ignores_rounding_noise_at_step_0():
    """Policy = reference up to float32 rounding of a different computation: no pair counts as learned."""
    g = torch.Generator().manual_seed(0)
    ref = -torch.rand(2, 256, generator=g, dtype=torch.float64) * 300  # summed log-probs of up to 300 nats
    noisy = ref * (1 + (torch.rand(2, 256, generator=g, dtype=torch.float64) - 0.5) * 2e-5)  # 1e-5 relative
    pol = noisy.float()
    assert implicit_accuracy(pol[0], pol[1], ref[0].float(), ref[1].float()).sum().item() == 0.0
    # the same noise read without the band (h > 0) counts about half the pairs: the defect the band removes
    h = (pol[0].double() - ref[0]) - (pol[1].double() - ref[1])
    assert (h > 0).float().mean().item() > 0.3


# --------------------------------------------------------------------------------------------------
# Reward-model losses
# --------------------------------------------------------------------------------------------------


def test_bradley_terry_hand_values():
    rc, rr = torch.tensor([1.5, -0.2]), torch.tensor([0.5, 0.4])
    assert close(bradley_terry_loss(rc, rr), [neg_logsig(1.0), neg_logsig(-0.6)])
    margin = torch.tensor([0.3, 0.0])
    assert close(bradley_terry_loss(rc, rr, margin=margin), [neg_logsig(0.7), neg_logsig(-0.6)])
    assert close(bradley_terry_loss(rc, rr, margin=0.3), [neg_logsig(0.7), neg_logsig(-0.9)])
    label = torch.tensor([0.8, 0.6])
    soft = bradley_terry_loss(rc, rr, margin=margin, label=label)
    assert close(
        soft,
        [0.8 * neg_logsig(0.7) + 0.2 * neg_logsig(-0.7), 0.6 * neg_logsig(-0.6) + 0.4 * neg_logsig(0.6)],
    )


def test_bradley_terry_soft_label_limits():
    torch.manual_seed(3)
    rc, rr = torch.randn(8) * 3, torch.randn(8) * 3
    assert torch.allclose(bradley_terry_loss(rc, rr, label=torch.ones(8)), bradley_terry_loss(rc, rr))
    half = torch.full((8,), 0.5)
    assert torch.allclose(bradley_terry_loss(rc, rr, label=half), bradley_terry_loss(rr, rc, label=half))
    # large gaps stay finite
    assert torch.isfinite(bradley_terry_loss(torch.tensor([-500.0]), torch.tensor([500.0]))).all()


def test_ranking_loss_is_mean_of_pairwise_terms_with_mask():
    rows = [[2.0, 1.0, -0.5, 0.3], [0.4, 0.9, -1.0, 99.0]]
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    expected = []
    for row, k in zip(rows, (4, 3), strict=True):
        terms = [neg_logsig(row[i] - row[j]) for i in range(k) for j in range(i + 1, k)]
        assert len(terms) == k * (k - 1) // 2
        expected.append(sum(terms) / len(terms))
    loss = ranking_loss(torch.tensor(rows), mask)
    assert loss.shape == (2,)
    assert close(loss, expected)
    # without padding, the first row alone agrees
    assert close(ranking_loss(torch.tensor(rows[:1])), expected[:1])


def test_ranking_loss_k2_equals_bradley_terry():
    torch.manual_seed(4)
    r = torch.randn(6, 2) * 2
    assert torch.allclose(ranking_loss(r), bradley_terry_loss(r[:, 0], r[:, 1]))


def test_ranking_loss_padding_does_not_leak_and_short_rows_are_zero():
    r = torch.tensor(
        [[1.0, 0.0, float("nan"), float("inf")], [3.0, float("nan"), 0.0, 0.0]], requires_grad=True
    )
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    loss = ranking_loss(r, mask)
    assert close(loss, [neg_logsig(1.0), 0.0])
    loss.sum().backward()
    assert torch.isfinite(r.grad).all()
    assert r.grad[0, 2:].eq(0).all() and r.grad[1].eq(0).all()


# --------------------------------------------------------------------------------------------------
# Token log-probabilities, SFT and Chain of Hindsight
# --------------------------------------------------------------------------------------------------


def _random_batch(seed=5, b=3, length=7, v=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, length, v, generator=g) * 3
    labels = torch.randint(0, v, (b, length), generator=g)
    return logits, labels


def test_token_logprobs_matches_log_softmax_gather():
    logits, labels = _random_batch()
    labels[0, :3] = -100
    labels[2, -2:] = -100
    out = token_logprobs(logits, labels)
    ref = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    ref = ref.masked_fill(labels == -100, 0.0)
    assert out.shape == labels.shape and out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5)
    assert out[0, :3].eq(0).all() and out[2, -2:].eq(0).all()


def test_token_logprobs_hand_value_and_bfloat16():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[2, 1]])
    lse = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    assert close(token_logprobs(logits, labels), [[3.0 - lse, -math.log(3.0)]])
    big, lab = _random_batch(seed=6)
    half = big.to(torch.bfloat16)
    out = token_logprobs(half, lab)
    assert out.dtype == torch.float32
    assert torch.allclose(out, token_logprobs(half.float(), lab), atol=1e-5)


def test_token_logprobs_rejects_bad_shapes():
    with pytest.raises(ValueError):
        token_logprobs(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))


def _hand_nll(logits: torch.Tensor, labels: torch.Tensor) -> list[list[float]]:
    """Per-sequence lists of −log p(target) with the shift, in plain Python."""
    out = []
    for b in range(labels.shape[0]):
        seq = []
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            z = logits[b, t].tolist()
            m = max(z)
            lse = m + math.log(sum(math.exp(v - m) for v in z))
            seq.append(lse - z[y])
        out.append(seq)
    return out


def _masked_batch():
    logits, labels = _random_batch(seed=7, b=4, length=8, v=9)
    labels[:, :3] = -100  # prompt
    labels[1, 6:] = -100  # padding: sequence 1 has fewer targets
    labels[3, :] = -100  # no target at all
    return logits, labels


def _scored(logits, labels):
    """The token log-probs (N,) and sequence ids (N,) that `models.score` gives for an (unshifted) labels batch:
    every target token's log-softmax entry, in row order."""
    logp = torch.log_softmax(logits[:, :-1].double(), -1)
    rows, cols = (labels[:, 1:] != -100).nonzero(as_tuple=True)
    return logp[rows, cols, labels[:, 1:][rows, cols]].float(), rows


def test_sft_loss_token_reduction_matches_cross_entropy():
    logits, labels = _masked_batch()
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    tokens, _ = _scored(logits, labels)
    got = sft_loss(tokens)
    assert got.dim() == 0
    assert torch.allclose(got, expected, atol=1e-5)
    flat = [x for seq in _hand_nll(logits, labels) for x in seq]
    assert close(got, sum(flat) / len(flat))
    # a distributed run divides by the mean token count over the processes
    assert close(sft_loss(tokens, n_tokens=2 * len(flat)), sum(flat) / (2 * len(flat)))


def test_sft_loss_sequence_reduction_hand_loop():
    logits, labels = _masked_batch()
    per_seq = [sum(s) / len(s) for s in _hand_nll(logits, labels) if s]
    assert len(per_seq) == 3  # the all-masked sequence is excluded
    expected = sum(per_seq) / len(per_seq)
    tokens, seq = _scored(logits, labels)
    assert close(sft_loss(tokens, seq, reduction="sequence"), expected)
    assert close(coh_loss(tokens, seq), expected)


def test_sft_loss_no_target_is_zero_with_gradient():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    for loss_fn in (sft_loss, coh_loss):
        tokens, seq = _scored(logits, torch.full((2, 4), -100))
        loss = loss_fn(tokens) if loss_fn is sft_loss else loss_fn(tokens, seq)
        assert loss.item() == 0.0
        assert loss.requires_grad
        loss.backward()
        assert torch.isfinite(logits.grad).all()


def test_sft_loss_unknown_reduction():
    logits, labels = _random_batch()
    tokens, seq = _scored(logits, labels)
    with pytest.raises(ValueError, match="reduction"):
        sft_loss(tokens, seq, reduction="sum")
    with pytest.raises(ValueError, match="sequence of every token"):
        sft_loss(tokens, reduction="sequence")
    with pytest.raises(ValueError, match=r"\(N,\)"):
        sft_loss(logits)
