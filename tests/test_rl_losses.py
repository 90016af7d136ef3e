"""Tests for the online-RL (PPO, RLOO) part of alignkit.losses, against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.losses import (
    adaptive_kl_beta,
    entropy_from_logprobs,
    gae,
    kl_k1,
    kl_k3,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    rloo_loss,
    token_entropy,
)

NAN = float("nan")
INF = float("inf")


def close(actual: torch.Tensor, expected, tol: float = 1e-6) -> None:
    """Element-wise comparison of a tensor with plain Python numbers (nested lists or a float)."""
    torch.testing.assert_close(
        actual.detach().double(), torch.tensor(expected, dtype=torch.float64), atol=tol, rtol=0.0
    )


# --------------------------------------------------------------------------------------------------
# masked_mean / masked_whiten
# --------------------------------------------------------------------------------------------------


def test_masked_mean_all_and_partial_masks():
    x = torch.tensor([[1.0, 2.0, NAN], [4.0, INF, -INF]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(masked_mean(x, mask), (1.0 + 2.0 + 4.0) / 3)
    close(masked_mean(x, mask.bool(), dim=1), [1.5, 4.0])
    close(masked_mean(x, mask.float(), dim=0), [2.5, 2.0, 0.0])  # column 2 has no entry -> 0
    empty = torch.zeros_like(mask)
    close(masked_mean(x, empty), 0.0)
    close(masked_mean(x, empty, dim=1), [0.0, 0.0])
    assert masked_mean(x.half(), mask).dtype == torch.float32


def test_masked_mean_gradient_only_on_masked_entries():
    x = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    masked_mean(x, torch.tensor([[1.0, 0.0, 1.0]])).backward()
    close(x.grad, [[0.5, 0.0, 0.5]])


def test_masked_whiten_partial_mask_by_hand():
    x = torch.tensor([[1.0, 2.0, 999.0], [3.0, 6.0, NAN]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    kept = [1.0, 2.0, 3.0, 6.0]
    mean = sum(kept) / len(kept)  # 3.0
    var = sum((v - mean) ** 2 for v in kept) / len(kept)  # (4 + 1 + 0 + 9) / 4 = 3.5
    scale = 1.0 / math.sqrt(var + 1e-8)
    expected = [[(1 - mean) * scale, (2 - mean) * scale, 0.0], [(3 - mean) * scale, (6 - mean) * scale, 0.0]]
    out = masked_whiten(x, mask)
    close(out, expected, tol=1e-5)
    close(masked_mean(out, mask), 0.0, tol=1e-6)
    close(masked_mean(out**2, mask), 1.0, tol=1e-5)
    unshifted = [[(1 - mean) * scale + mean, (2 - mean) * scale + mean, 0.0],
                 [(3 - mean) * scale + mean, (6 - mean) * scale + mean, 0.0]]
    close(masked_whiten(x, mask, shift_mean=False), unshifted, tol=1e-5)


def test_masked_whiten_all_zero_mask_and_single_entry():
    x = torch.tensor([[5.0, NAN], [INF, 2.0]])
    out = masked_whiten(x, torch.zeros(2, 2))
    close(out, [[0.0, 0.0], [0.0, 0.0]])
    one = masked_whiten(x, torch.tensor([[1, 0], [0, 0]]))
    close(one, [[0.0, 0.0], [0.0, 0.0]])  # a single entry: x − μ = 0
    assert torch.isfinite(one).all()


# --------------------------------------------------------------------------------------------------
# KL estimators
# --------------------------------------------------------------------------------------------------


def test_kl_k1_and_k3_by_hand():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    close(kl_k1(logp, ref), [0.5, -1.0, 0.0])
    # log r = ref − logp = [−0.5, 1.0, 0.0]; k3 = e^{log r} − 1 − log r
    expected = [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0, 0.0]
    close(kl_k3(logp, ref), expected)


def test_kl_k3_never_negative():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(4096, generator=g) * 3
    ref = torch.randn(4096, generator=g) * 3
    near = logp + torch.randn(4096, generator=g) * 1e-4  # tiny log-ratios, where rounding could bite
    assert (kl_k3(logp, ref) >= 0).all()
    assert (kl_k3(logp, near) >= 0).all()
    assert (kl_k3(logp, logp) == 0).all()


def test_k1_and_k3_are_unbiased_for_samples_from_the_policy():
    p = [0.1, 0.2, 0.3, 0.25, 0.15]  # policy
    q = [0.3, 0.1, 0.2, 0.2, 0.2]  # reference
    exact = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    g = torch.Generator().manual_seed(1234)
    samples = torch.multinomial(torch.tensor(p), 200_000, replacement=True, generator=g)
    logp = torch.tensor([math.log(v) for v in p])[samples]
    ref = torch.tensor([math.log(v) for v in q])[samples]
    assert abs(kl_k1(logp, ref).mean().item() - exact) < 1e-2
    assert abs(kl_k3(logp, ref).mean().item() - exact) < 1e-2


# --------------------------------------------------------------------------------------------------
# Per-token rewards and GAE
# --------------------------------------------------------------------------------------------------


def test_per_token_rewards_places_score_at_last_token():
    logp = torch.tensor([[-1.0, -2.0, -0.5, 7.0], [-1.0, -1.0, -1.0, -1.0], [3.0, NAN, INF, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -99.0], [-2.0, -1.0, -0.5, -3.0], [NAN, 1.0, -INF, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    score = torch.tensor([2.0, -1.0, 10.0])
    beta = 0.1
    # row 0: k1 = [0.5, −1, 0], score at index 2, padding 0
    # row 1: k1 = [1, 0, −0.5, 2], score at index 3 (no padding)
    # row 2: empty mask, no score
    expected = [
        [-beta * 0.5, -beta * -1.0, -beta * 0.0 + 2.0, 0.0],
        [-beta * 1.0, -beta * 0.0, -beta * -0.5, -beta * 2.0 - 1.0],
        [0.0, 0.0, 0.0, 0.0],
    ]
    out = per_token_rewards(score, logp, ref, mask, beta)
    assert out.shape == (3, 4) and out.dtype == torch.float32
    close(out, expected)


def test_gae_hand_example_with_padding_that_must_not_leak():
    # Row 0: rewards [0, 0, 1], values [0.5, 0.2, 0.4], γ = 1, λ = 0.95, V beyond the end = 0.
    #   δ2 = 1 + 0   − 0.4 =  0.6      A2 = 0.6
    #   δ1 = 0 + 0.4 − 0.2 =  0.2      A1 = 0.2  + 0.95 · 0.6  = 0.77
    #   δ0 = 0 + 0.2 − 0.5 = −0.3      A0 = −0.3 + 0.95 · 0.77 = 0.4315
    #   returns = A + V = [0.9315, 0.97, 1.0]
    # Row 1: EOS at index 1, garbage after it. rewards [0, 1], values [0.3, 0.6]
    #   δ1 = 1 − 0.6 = 0.4             A1 = 0.4
    #   δ0 = 0 + 0.6 − 0.3 = 0.3       A0 = 0.3 + 0.95 · 0.4 = 0.68
    #   returns = [0.98, 1.0]
    rewards = torch.tensor([[0.0, 0.0, 1.0, 55.0], [0.0, 1.0, 99.0, NAN]])
    values = torch.tensor([[0.5, 0.2, 0.4, -7.0], [0.3, 0.6, 123.0, INF]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    close(adv, [[0.4315, 0.77, 0.6, 0.0], [0.68, 0.4, 0.0, 0.0]])
    close(ret, [[0.9315, 0.97, 1.0, 0.0], [0.98, 1.0, 0.0, 0.0]])
    assert not adv.requires_grad and not ret.requires_grad


def test_gae_discounted_case():
    # γ = 0.9, λ = 0.5 (γλ = 0.45), same row:
    #   δ2 = 1 − 0.4 = 0.6                       A2 = 0.6
    #   δ1 = 0 + 0.9 · 0.4 − 0.2 = 0.16          A1 = 0.16 + 0.45 · 0.6 = 0.43
    #   δ0 = 0 + 0.9 · 0.2 − 0.5 = −0.32         A0 = −0.32 + 0.45 · 0.43 = −0.1265
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.4]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.5)
    close(adv, [[-0.1265, 0.43, 0.6]])
    close(ret, [[-0.1265 + 0.5, 0.43 + 0.2, 0.6 + 0.4]])


def test_gae_matches_a_plain_loop_on_random_rows():
    g = torch.Generator().manual_seed(3)
    rewards = torch.randn(3, 6, generator=g)
    values = torch.randn(3, 6, generator=g)
    lengths = [6, 4, 1]
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    gamma, lam = 0.97, 0.9
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    for b, n in enumerate(lengths):
        r = rewards[b].tolist()
        v = values[b].tolist()
        for t in range(6):
            if t >= n:
                assert adv[b, t].item() == 0.0 and ret[b, t].item() == 0.0
                continue
            total = 0.0
            for lag in range(n - t):
                s = t + lag
                v_next = v[s + 1] if s + 1 < n else 0.0
                total += (gamma * lam) ** lag * (r[s] + gamma * v_next - v[s])
            assert abs(adv[b, t].item() - total) < 1e-5
            assert abs(ret[b, t].item() - (total + v[t])) < 1e-5


# --------------------------------------------------------------------------------------------------
# PPO losses
# --------------------------------------------------------------------------------------------------


def test_ppo_policy_loss_at_ratio_one_is_minus_mean_advantage():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, 4.0, NAN]], requires_grad=True)
    adv = torch.tensor([[1.0, -2.0, 0.5], [3.0, 100.0, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    loss, stats = ppo_policy_loss(logp, logp.detach().clone(), adv, mask)
    close(loss, -(1.0 - 2.0 + 0.5 + 3.0) / 4)
    close(stats["clip_fraction"], 0.0)
    close(stats["ratio_mean"], 1.0)
    close(stats["approx_kl"], 0.0)
    loss.backward()
    close(logp.grad, [[-1.0 / 4, 2.0 / 4, -0.5 / 4], [-3.0 / 4, 0.0, 0.0]])


def test_ppo_policy_loss_clipping_by_hand():
    # c = 0.2, tokens (A, ρ) and per-token max(−Aρ, −A·clip(ρ, 0.8, 1.2)):
    #   (1, 1.5):  max(−1.5, −1.2) = −1.2   clipped
    #   (1, 1.1):  max(−1.1, −1.1) = −1.1   not clipped (inside the range)
    #   (−1, 0.5): max(0.5, 0.8)   =  0.8   clipped
    #   (−2, 1.5): max(3.0, 2.4)   =  3.0   not clipped (unclipped term is larger)
    #   (2, 0.5):  max(−1.0, −1.6) = −1.0   not clipped
    #   a 6th, masked token with garbage
    # loss = (−1.2 − 1.1 + 0.8 + 3.0 − 1.0) / 5 = 0.1, clip_fraction = 2/5
    advs = [1.0, 1.0, -1.0, -2.0, 2.0]
    ratios = [1.5, 1.1, 0.5, 1.5, 0.5]
    old = torch.tensor([[-1.0, -2.0, -3.0, -1.5, -0.7, NAN]])
    logp = (old + torch.tensor([[math.log(r) for r in ratios] + [50.0]])).detach().requires_grad_(True)
    adv = torch.tensor([advs + [INF]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    loss, stats = ppo_policy_loss(logp, old, adv, mask, clip=0.2)
    close(loss, 0.1, tol=1e-5)
    close(stats["clip_fraction"], 0.4)
    close(stats["ratio_mean"], sum(ratios) / 5, tol=1e-5)
    close(stats["approx_kl"], sum((r - 1) - math.log(r) for r in ratios) / 5, tol=1e-5)
    assert not any(v.requires_grad for v in stats.values())
    loss.backward()
    # d/dlogp of −Aρ is −Aρ; clipped tokens and the masked one get 0
    expected_grad = [0.0, -1.0 * 1.1 / 5, 0.0, 2.0 * 1.5 / 5, -2.0 * 0.5 / 5, 0.0]
    close(logp.grad, [expected_grad], tol=1e-5)


def test_ppo_value_loss_by_hand():
    # c = 0.2, tokens (V_old, V, R):
    #   (1.0, 1.5, 2.0): clip V → 1.2; (1.5−2)² = 0.25, (1.2−2)² = 0.64 → 0.64  clipped
    #   (1.0, 1.1, 0.0): clip V = 1.1;  1.21 both                      → 1.21  not clipped
    #   (0.0, 0.3, 1.0): clip V → 0.2; (0.3−1)² = 0.49, (0.2−1)² = 0.64 → 0.64  clipped
    #   (1.0, 1.5, 0.0): clip V → 1.2;  2.25 vs 1.44                    → 2.25  not clipped
    #   masked token with garbage
    # loss = 0.5 · (0.64 + 1.21 + 0.64 + 2.25) / 4 = 0.5925, value_clip_fraction = 0.5
    values = torch.tensor([[1.5, 1.1, 0.3, 1.5, 42.0]], requires_grad=True)
    old = torch.tensor([[1.0, 1.0, 0.0, 1.0, NAN]])
    returns = torch.tensor([[2.0, 0.0, 1.0, 0.0, INF]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = ppo_value_loss(values, old, returns, mask, clip=0.2)
    close(loss, 0.5925, tol=1e-6)
    close(stats["value_clip_fraction"], 0.5)
    loss.backward()
    # gradient 0.5 · 2 (V − R) / 4 on unclipped tokens, 0 on clipped and masked ones
    close(values.grad, [[0.0, 1.1 / 4, 0.0, 1.5 / 4, 0.0]], tol=1e-6)


# --------------------------------------------------------------------------------------------------
# RLOO
# --------------------------------------------------------------------------------------------------


def test_rloo_advantages_leave_one_out():
    r = [1.0, 2.0, 6.0, -1.0, 0.5, 0.5]
    k = 3
    adv = rloo_advantages(torch.tensor(r), k)
    for start in range(0, len(r), k):
        group = r[start : start + k]
        for i, value in enumerate(group):
            others = [x for j, x in enumerate(group) if j != i]
            assert abs(adv[start + i].item() - (value - sum(others) / len(others))) < 1e-6
        assert abs(sum(adv[start : start + k].tolist())) < 1e-6
    close(adv[:3], [1.0 - 4.0, 2.0 - 3.5, 6.0 - 1.5])


def test_rloo_advantages_k2_and_errors():
    adv = rloo_advantages(torch.tensor([3.0, 1.0, -2.0, 5.0]), 2)
    close(adv, [3.0 - 1.0, 1.0 - 3.0, -2.0 - 5.0, 5.0 - (-2.0)])
    with pytest.raises(ValueError):
        rloo_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError):
        rloo_advantages(torch.zeros(4), 1)


def test_rloo_loss_without_clip_is_reinforce():
    seq_logp = torch.tensor([-3.0, -5.0, -2.0, -4.0], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    loss, stats = rloo_loss(seq_logp, torch.full((4,), NAN), adv, clip=None)
    close(loss, -(1.0 * -3.0 + -1.0 * -5.0 + 0.5 * -2.0 + -0.5 * -4.0) / 4)
    close(stats["clip_fraction"], 0.0)
    loss.backward()
    close(seq_logp.grad, [-1.0 / 4, 1.0 / 4, -0.5 / 4, 0.5 / 4])


def test_rloo_loss_clipped_matches_reinforce_gradient_at_ratio_one_and_clips():
    seq_logp = torch.tensor([-3.0, -5.0, -2.0, -4.0], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    loss, stats = rloo_loss(seq_logp, seq_logp.detach(), adv, clip=0.2)
    close(loss, -sum(adv.tolist()) / 4)
    close(stats["clip_fraction"], 0.0)
    loss.backward()
    close(seq_logp.grad, [-1.0 / 4, 1.0 / 4, -0.5 / 4, 0.5 / 4])
    # A = [1, −1], ρ = [1.5, 1.0]: max(−1.5, −1.2) = −1.2 (clipped), max(1, 1) = 1 → loss −0.1
    old = torch.tensor([-2.0, -1.0])
    new = old + torch.tensor([math.log(1.5), 0.0])
    loss, stats = rloo_loss(new, old, torch.tensor([1.0, -1.0]), clip=0.2)
    close(loss, -0.1, tol=1e-6)
    close(stats["clip_fraction"], 0.5)


# --------------------------------------------------------------------------------------------------
# Adaptive KL coefficient and entropy
# --------------------------------------------------------------------------------------------------


def test_adaptive_kl_beta_by_hand():
    n, horizon = 256, 10_000
    assert adaptive_kl_beta(0.1, 6.0, 6.0, n, horizon) == pytest.approx(0.1)
    # KL/target − 1 = −0.1 (inside the clip)
    assert adaptive_kl_beta(0.1, 5.4, 6.0, n, horizon) == pytest.approx(0.1 * (1 - 0.1 * n / horizon))
    # +0.5 clipped to +0.2
    assert adaptive_kl_beta(0.1, 9.0, 6.0, n, horizon) == pytest.approx(0.1 * (1 + 0.2 * n / horizon))
    # −1 clipped to −0.2; a tensor KL is accepted
    out = adaptive_kl_beta(0.1, torch.tensor(0.0), 6.0, n, horizon)
    assert isinstance(out, float) and out == pytest.approx(0.1 * (1 - 0.2 * n / horizon))


def test_token_entropy_matches_softmax_formula():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 3, 7, generator=g) * 2
    p = torch.softmax(logits, dim=-1)
    expected = -(p * torch.log_softmax(logits, dim=-1)).sum(dim=-1)
    out = token_entropy(logits)
    assert out.shape == (2, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0.0)
    assert token_entropy(logits.bfloat16()).dtype == torch.float32
    # one position by hand with plain math
    row = logits[1, 2].tolist()
    total = sum(math.exp(z) for z in row)
    hand = -sum(math.exp(z) / total * math.log(math.exp(z) / total) for z in row)
    assert abs(out[1, 2].item() - hand) < 1e-5


def test_entropy_from_logprobs_by_hand():
    """−Σ p log p from log-probs: a two-point distribution by hand, a banned (−inf) token adding nothing, and
    the same numbers as the softmax formula on random logits."""
    p = torch.tensor([0.25, 0.75, 0.0])
    hand = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    close(entropy_from_logprobs(p.log()), hand, tol=1e-6)
    logits = torch.randn(4, 9, generator=torch.Generator().manual_seed(3)) * 3
    sm = torch.softmax(logits, dim=-1)
    torch.testing.assert_close(entropy_from_logprobs(torch.log_softmax(logits, dim=-1)),
                               -(sm * sm.log()).sum(-1), atol=1e-5, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the sampler under --mixed-precision bf16: still float32
        under = entropy_from_logprobs(torch.log_softmax(logits, dim=-1))
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, -(sm * sm.log()).sum(-1), atol=1e-5, rtol=0)


def test_token_entropy_uniform_and_banned_tokens():
    close(token_entropy(torch.full((2, 3, 11), 3.0)), [[math.log(11)] * 3] * 2, tol=1e-5)
    logits = torch.tensor([[[0.0, 0.0, -INF]]], requires_grad=True)
    out = token_entropy(logits)
    close(out, [[math.log(2)]], tol=1e-6)
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()
