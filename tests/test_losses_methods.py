"""GRPO (and its Dr. GRPO and DAPO variants), KTO, SimPO and ORPO losses against numbers computed by hand with
Python floats (math), including the edge cases: a group whose rewards are all equal, a KTO batch with one kind of
example only, SimPO at γ = 0."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.losses import group_advantages, grpo_loss, kto_loss, orpo_loss, simpo_loss


def close(a, b, tol=1e-5):
    a = a.tolist() if torch.is_tensor(a) else a
    return a == pytest.approx(b, abs=tol, rel=tol)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ---- GRPO group advantages ----------------------------------------------------------------------------------


def test_group_advantages_by_hand():
    rewards = [1.0, 0.0, 0.0, 1.0, 2.0, 4.0]  # two groups of 3
    out = []
    for g in (rewards[:3], rewards[3:]):
        mean = sum(g) / 3
        std = math.sqrt(sum((r - mean) ** 2 for r in g) / 2)  # sample std, divisor G - 1
        out += [(r - mean) / (std + 1e-4) for r in g]
    got = group_advantages(torch.tensor(rewards), 3)
    assert close(got, out)
    assert close(group_advantages(torch.tensor(rewards), 3, scale=False), [2 / 3, -1 / 3, -1 / 3, -4 / 3, -1 / 3, 5 / 3])


def test_group_advantages_equal_rewards_are_zero_not_nan():
    got = group_advantages(torch.tensor([0.7, 0.7, 0.7, 0.7, 1.0, 0.0, 1.0, 0.0]), 4)
    assert torch.isfinite(got).all() and got[:4].tolist() == [0.0] * 4 and got[4:].abs().min() > 0.5


def test_group_advantages_refuses_bad_groups():
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="divisible"):
        group_advantages(torch.zeros(5), 2)


# ---- GRPO loss ------------------------------------------------------------------------------------------------

LOGP = [[-1.0, -2.0, -0.5], [-0.3, -1.2, 0.0]]
OLD = [[-1.1, -1.5, -0.5], [-0.9, -1.2, 0.0]]
REF = [[-1.3, -2.1, -0.4], [-0.2, -1.0, 0.0]]
MASK = [[1, 1, 1], [1, 1, 0]]  # response 2 has 2 tokens
ADV = [1.5, -0.8]


def _grpo_by_hand(eps_low, eps_high, aggregation, beta=0.0, max_length=None):
    per_seq, total, tokens = [], 0.0, 0
    for i in range(2):
        terms = []
        for t in range(3):
            if not MASK[i][t]:
                continue
            rho = math.exp(LOGP[i][t] - OLD[i][t])
            a = ADV[i]
            clipped = min(max(rho, 1 - eps_low), 1 + eps_high)
            term = max(-a * rho, -a * clipped)
            if beta:
                log_r = REF[i][t] - LOGP[i][t]
                term += beta * (math.exp(log_r) - log_r - 1)
            terms.append(term)
        per_seq.append(sum(terms) / len(terms))
        total += sum(terms)
        tokens += len(terms)
    if aggregation == "grpo":
        return sum(per_seq) / 2
    if aggregation == "dapo":
        return total / tokens
    return total / (2 * max_length)


@pytest.mark.parametrize("aggregation", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize(("eps_high", "beta"), [(None, 0.0), (0.28, 0.0), (0.28, 0.04)])
def test_grpo_loss_by_hand(aggregation, eps_high, beta):
    t = torch.tensor
    logp = t(LOGP, requires_grad=True)
    loss, stats = grpo_loss(logp, t(OLD), t(ADV), t(MASK), epsilon_low=0.2, epsilon_high=eps_high,
                            aggregation=aggregation, max_length=4, ref_logp=t(REF), beta=beta)
    want = _grpo_by_hand(0.2, 0.2 if eps_high is None else eps_high, aggregation, beta, max_length=4)
    assert close(loss, want)
    loss.backward()
    assert logp.grad[1, 2] == 0  # the padding position gets no gradient
    assert ("kl_penalty" in stats) == (beta > 0)


def test_grpo_clip_higher_changes_only_the_upper_bound():
    """ρ = e^0.6 ≈ 1.82 with A > 0 is clipped at 1 + ε_high; ρ = e^−0.6 ≈ 0.55 with A < 0 at 1 − ε_low either way."""
    t = torch.tensor
    up = grpo_loss(t([[0.6]]), t([[0.0]]), t([1.0]), t([[1]]), epsilon_low=0.2, epsilon_high=0.28)[0]
    assert close(up, -1.28)
    down = grpo_loss(t([[-0.6]]), t([[0.0]]), t([-1.0]), t([[1]]), epsilon_low=0.2, epsilon_high=0.28)[0]
    assert close(down, 0.8)


def test_grpo_zero_advantage_gives_zero_loss_and_gradient():
    logp = torch.tensor(LOGP, requires_grad=True)
    loss, _ = grpo_loss(logp, torch.tensor(OLD), torch.zeros(2), torch.tensor(MASK))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logp.grad).all() and logp.grad.abs().max() == 0


def test_grpo_loss_refusals():
    t = torch.tensor
    with pytest.raises(ValueError, match="unknown aggregation"):
        grpo_loss(t(LOGP), t(OLD), t(ADV), t(MASK), aggregation="sum")
    with pytest.raises(ValueError, match="max_length"):
        grpo_loss(t(LOGP), t(OLD), t(ADV), t(MASK), aggregation="dr_grpo")
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(t(LOGP), t(OLD), t(ADV), t(MASK), beta=0.1)


# ---- KTO -----------------------------------------------------------------------------------------------------


def test_kto_loss_by_hand():
    pol, ref = [-10.0, -12.0, -9.0, -15.0], [-11.0, -11.5, -9.5, -14.0]
    good = [True, False, True, False]
    kl, beta, wd, wu = 0.3, 0.1, 1.0, 1.5
    want = []
    for p, r, g in zip(pol, ref, good, strict=True):
        rr = p - r
        want.append(wd * (1 - sigmoid(beta * (rr - kl))) if g else wu * (1 - sigmoid(beta * (kl - rr))))
    loss, stats = kto_loss(torch.tensor(pol), torch.tensor(ref), torch.tensor(good), kl, beta=beta,
                           desirable_weight=wd, undesirable_weight=wu)
    assert close(loss, sum(want) / 4)
    assert close(stats["reward_desirable"], beta * ((-10 + 11) + (-9 + 9.5)) / 2)
    # a negative KL estimate is clamped to 0
    assert close(kto_loss(torch.tensor(pol), torch.tensor(ref), torch.tensor(good), -2.0, beta=beta,
                          desirable_weight=wd, undesirable_weight=wu)[1]["kl"], 0.0)


def test_kto_batch_with_one_kind_only():
    pol, ref = torch.tensor([-10.0, -12.0]), torch.tensor([-11.0, -11.5])
    loss, stats = kto_loss(pol, ref, torch.tensor([True, True]), 0.0, beta=0.5)
    assert close(loss, ((1 - sigmoid(0.5)) + (1 - sigmoid(-0.25))) / 2)
    assert stats["reward_undesirable"].item() == 0.0 and torch.isfinite(loss)
    loss, stats = kto_loss(pol, ref, torch.tensor([False, False]), 0.0, beta=0.5)
    assert close(loss, ((1 - sigmoid(-0.5)) + (1 - sigmoid(0.25))) / 2)
    assert stats["reward_desirable"].item() == 0.0


# ---- SimPO and ORPO ------------------------------------------------------------------------------------------


def test_simpo_by_hand_and_gamma_zero_closed_form():
    cw, cl, nw, nl = [-12.0, -30.0], [-20.0, -18.0], [6, 10], [8, 6]
    beta, gamma = 2.0, 1.0
    want = [-math.log(sigmoid(beta * w / a - beta * lo / b - gamma)) for w, lo, a, b in zip(cw, cl, nw, nl, strict=True)]
    t = torch.tensor
    assert close(simpo_loss(t(cw), t(cl), t(nw), t(nl), beta=beta, gamma=gamma), want)
    zero = [math.log(1 + math.exp(-beta * (w / a - lo / b))) for w, lo, a, b in zip(cw, cl, nw, nl, strict=True)]
    assert close(simpo_loss(t(cw), t(cl), t(nw), t(nl), beta=beta, gamma=0.0), zero)


def test_orpo_by_hand():
    cw, cl, nw, nl = [-3.0, -9.0], [-6.0, -4.0], [3, 6], [4, 2]

    def log_odds(logp, n):
        p = math.exp(logp / n)
        return math.log(p / (1 - p))

    t = torch.tensor
    ratio, sft = orpo_loss(t(cw), t(cl), t(nw), t(nl), weight=0.1)
    want = [0.1 * -math.log(sigmoid(log_odds(w, a) - log_odds(lo, b))) for w, lo, a, b in zip(cw, cl, nw, nl, strict=True)]
    assert close(ratio, want)
    assert close(sft, [1.0, 1.5])
    # a response the model is certain of (mean log-prob 0) keeps finite odds
    ratio, _ = orpo_loss(t([0.0]), t([-5.0]), t([3]), t([5]))
    assert torch.isfinite(ratio).all()
