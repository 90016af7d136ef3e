"""Loss functions: pure tensor-in, tensor-out units, each with its formula and source.

Nothing here touches a model, a file or a config object. Every function computes in float32 whatever the
input dtype. Unless a docstring says otherwise a loss returns one value per example, shape (B,), and the
caller chooses the reduction.

Notation (see ``docs/algorithms.md``): ``σ`` is the logistic function, ``β > 0`` the preference temperature,
and for a preference pair (chosen ``w``, rejected ``l``) the log-ratio margin is

    h = [logπ(y_w) − logπ_ref(y_w)] − [logπ(y_l) − logπ_ref(y_l)]

where each log-probability is summed over the response tokens. A soft label ``p ∈ [0.5, 1]`` is the
probability that the chosen response is the better one (1 for a hard label).

Naming note: ``gdpo`` here is the geometric-averaged DPO for soft preference labels of Furuta et al. 2024
("Geometric-Averaged Preference Optimization for Soft Preference Labels"). It is NOT the multi-reward GRPO
variant that TRL exposes under the same name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
"""Label value that marks a position with no target (prompt, feedback phrase, padding)."""

PREFERENCE_LOSSES = ("dpo", "cdpo", "ipo", "hinge", "gdpo", "gipo")
"""The kinds accepted by :func:`preference_loss`."""

_EXACT_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------------
# Token log-probabilities and supervised cross-entropy
# --------------------------------------------------------------------------------------------------


def token_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-token log-probability of ``labels`` under ``logits``: ``log p(y_t) = z_t[y_t] − logsumexp(z_t)``.

    ``logits`` is (B, L, V) and ``labels`` is (B, L), already aligned (``labels[:, t]`` is scored by
    ``logits[:, t]``; the caller does any shift). Positions whose label is ``-100`` get 0. The result is
    float32 of shape (B, L). No full-vocabulary log-softmax tensor is built: the target logit is gathered
    and the log-normaliser subtracted; for half-precision logits the normaliser is computed one sequence
    at a time in float32, so at most one (L, V) float32 copy exists at once.

    Source: the softmax log-likelihood of any language model (e.g. Radford et al. 2019).
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"token_logprobs expects logits (B, L, V) and labels (B, L); got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    valid = labels != IGNORE_INDEX
    index = torch.where(valid, labels, torch.zeros_like(labels)).long()
    picked = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1).float()
    if logits.dtype in _EXACT_DTYPES:
        lse = torch.logsumexp(logits.float(), dim=-1)
    else:
        lse = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])
    return torch.where(valid, picked - lse, torch.zeros_like(picked))


def sft_loss(token_logp: Tensor, seq: Tensor | None = None, *, reduction: str = "token",
             n_tokens: float | None = None) -> Tensor:
    """Next-token cross-entropy on response tokens only, from their log-probabilities; returns a scalar.

    ``token_logp`` (N,) holds ``log p(y_t | y_<t)`` of every target token of the batch (prompt and padding are
    not in it: `models.score` reads only the scored tokens), ``seq`` (N,) the sequence each belongs to:

        L = −(1/N) Σ_t log p(y_t | y_<t)

    ``reduction="token"``: mean over all target tokens (N = their count, or ``n_tokens`` when given: the mean
    count over the processes of a distributed run, so that the averaged gradients follow the global token mean).
    ``reduction="sequence"``: mean over each sequence's tokens, then mean over the sequences that have at least
    one (needs ``seq``). No target token gives 0, still attached to the graph.

    Source: supervised fine-tuning on demonstrations, Ouyang et al. 2022 (InstructGPT).
    """
    if token_logp.dim() != 1:
        raise ValueError(f"sft_loss expects token log-probs (N,); got shape {tuple(token_logp.shape)}")
    nll = -token_logp.float()
    if reduction == "token":
        n = token_logp.shape[0] if n_tokens is None else n_tokens
        return nll.sum() / max(n, 1)
    if reduction == "sequence":
        if seq is None or seq.shape != token_logp.shape:
            raise ValueError("sft_loss(reduction='sequence') needs the sequence of every token, shape (N,)")
        n_seqs = int(seq.max()) + 1 if seq.numel() else 0
        sums = torch.zeros(n_seqs, dtype=nll.dtype, device=nll.device).index_add(0, seq, nll)
        counts = torch.bincount(seq, minlength=n_seqs)
        has = counts > 0
        return (sums[has] / counts[has]).sum() / has.sum().clamp(min=1)
    raise ValueError(f"unknown reduction {reduction!r}; expected 'token' or 'sequence'")


def coh_loss(token_logp: Tensor, seq: Tensor) -> Tensor:
    """Chain of Hindsight cross-entropy; returns a scalar.

    Same convention as :func:`sft_loss`: the log-probs of the model-output tokens only, good and bad (the prompt
    and the feedback phrases such as "A helpful answer:" are not scored), with the sequence of each:

        L = −(1/|S|) Σ_{s ∈ S} (1/|T_s|) Σ_{t ∈ T_s} log p(y_{s,t} | y_{s,<t})

    i.e. averaged per sequence, then over the sequences S that have target tokens T_s.

    Source: Liu, Sferrazza & Abbeel 2023, "Chain of Hindsight Aligns Language Models with Feedback".
    """
    return sft_loss(token_logp, seq, reduction="sequence")


# --------------------------------------------------------------------------------------------------
# Reward-model losses
# --------------------------------------------------------------------------------------------------


def bradley_terry_loss(
    r_chosen: Tensor,
    r_rejected: Tensor,
    *,
    margin: Tensor | float | None = None,
    label: Tensor | float | None = None,
) -> Tensor:
    """Pairwise Bradley-Terry reward-model loss, shape (B,).

    With ``Δ = r_chosen − r_rejected − m`` (margin ``m``, default 0):

        hard label:        L = −log σ(Δ)
        soft label p:      L = −p log σ(Δ) − (1 − p) log σ(−Δ)

    ``label`` is the probability that the chosen response is better; ``None`` means a hard label (p = 1).

    Sources: Bradley & Terry 1952; reward modelling as in Ouyang et al. 2022 (InstructGPT); per-pair
    margin as in Touvron et al. 2023 (Llama 2).
    """
    delta = r_chosen.float() - r_rejected.float()
    if margin is not None:
        delta = delta - torch.as_tensor(margin, dtype=torch.float32, device=delta.device)
    if label is None:
        return -F.logsigmoid(delta)
    p = torch.as_tensor(label, dtype=torch.float32, device=delta.device)
    return -p * F.logsigmoid(delta) - (1.0 - p) * F.logsigmoid(-delta)


def ranking_loss(rewards: Tensor, mask: Tensor | None = None) -> Tensor:
    """K-wise ranking loss: all pairs of one prompt's ranked responses form one example; shape (B,).

    ``rewards`` is (B, K) with the responses of each row ordered best first; ``mask`` (B, K, bool) marks
    the real responses (variable K per row; padded entries may hold any value):

        L = −(1/C(K,2)) Σ_{i<j, both valid} log σ(r_i − r_j)

    A row with fewer than two valid responses has no pair and gets loss 0.

    Source: Ouyang et al. 2022 (InstructGPT), eq. 1.
    """
    if rewards.dim() != 2:
        raise ValueError(f"ranking_loss expects rewards of shape (B, K); got {tuple(rewards.shape)}")
    r = rewards.float()
    if mask is None:
        mask = torch.ones_like(r, dtype=torch.bool)
    elif mask.shape != r.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match rewards {tuple(r.shape)}")
    mask = mask.bool()
    r = torch.where(mask, r, torch.zeros_like(r))  # keep padding out of the graph, even if inf/nan
    k = r.shape[1]
    upper = torch.ones(k, k, dtype=torch.bool, device=r.device).triu(diagonal=1)
    pairs = upper & mask.unsqueeze(2) & mask.unsqueeze(1)  # pairs[b, i, j]: i ranked above j, both valid
    terms = -F.logsigmoid(r.unsqueeze(2) - r.unsqueeze(1))
    total = torch.where(pairs, terms, torch.zeros_like(terms)).sum(dim=(1, 2))
    return total / pairs.sum(dim=(1, 2)).clamp(min=1)


# --------------------------------------------------------------------------------------------------
# Direct preference losses (all take the log-ratio margin h, shape (B,))
# --------------------------------------------------------------------------------------------------


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0; got {beta}")


def _soft_weight(label: Tensor | float | None, h: Tensor) -> Tensor | float:
    """``2p − 1`` for a soft label p (1.0 when there is no label)."""
    if label is None:
        return 1.0
    return 2.0 * torch.as_tensor(label, dtype=torch.float32, device=h.device) - 1.0


def dpo_loss(h: Tensor, beta: float) -> Tensor:
    """DPO: ``L = −log σ(β h)``.

    Source: Rafailov et al. 2023, "Direct Preference Optimization".
    """
    _check_beta(beta)
    return -F.logsigmoid(beta * h.float())


def cdpo_loss(h: Tensor, beta: float, epsilon: Tensor | float = 0.0) -> Tensor:
    """Conservative DPO (label smoothing): ``L = −(1 − ε) log σ(β h) − ε log σ(−β h)``.

    ``ε`` is the assumed probability that the preference label is flipped (a float, or a (B,) tensor;
    :func:`preference_loss` passes ``ε = 1 − p`` for soft labels). ε = 0 is DPO.

    Source: Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO"; the ``cdpo``
    option of the official DPO code (Rafailov et al. 2023).
    """
    _check_beta(beta)
    z = beta * h.float()
    eps = torch.as_tensor(epsilon, dtype=torch.float32, device=z.device)
    return -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def ipo_loss(h: Tensor, beta: float) -> Tensor:
    """IPO: ``L = (h − 1/(2β))²`` with ``h`` built from summed log-probabilities.

    Source: Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences".
    """
    _check_beta(beta)
    return (h.float() - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(h: Tensor, beta: float) -> Tensor:
    """SLiC-style hinge: ``L = max(0, 1 − β h)``.

    Source: Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback".
    """
    _check_beta(beta)
    return torch.relu(1.0 - beta * h.float())


def gdpo_loss(h: Tensor, beta: float, label: Tensor | float | None = None) -> Tensor:
    """Geometric-averaged DPO for soft labels: ``L = −log σ(β (2p − 1) h)``.

    ``p ∈ [0.5, 1]`` is the soft label (``None`` means 1, which gives exactly :func:`dpo_loss`); at
    p = 0.5 the loss is log 2 with zero gradient, so a tie teaches nothing.

    Source: Furuta et al. 2024, "Geometric-Averaged Preference Optimization for Soft Preference Labels".
    Not TRL's multi-reward GRPO option that is also called GDPO.
    """
    _check_beta(beta)
    return -F.logsigmoid(beta * _soft_weight(label, h) * h.float())


def gipo_loss(h: Tensor, beta: float, label: Tensor | float | None = None) -> Tensor:
    """Geometric-averaged IPO for soft labels: ``L = ((2p − 1) h − 1/(2β))²``.

    ``p ∈ [0.5, 1]`` (``None`` means 1, which gives exactly :func:`ipo_loss`).

    Source: Furuta et al. 2024, "Geometric-Averaged Preference Optimization for Soft Preference Labels".
    """
    _check_beta(beta)
    return (_soft_weight(label, h) * h.float() - 1.0 / (2.0 * beta)) ** 2


def preference_loss(
    kind: str,
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    reference_chosen: Tensor,
    reference_rejected: Tensor,
    *,
    beta: float,
    label: Tensor | float | None = None,
    epsilon: Tensor | float = 0.0,
) -> Tensor:
    """One of the direct preference losses, by name; shape (B,).

    The four inputs are summed response log-probabilities, shape (B,). The margin is

        h = (policy_chosen − reference_chosen) − (policy_rejected − reference_rejected)

    and ``kind`` picks the loss: ``dpo`` −log σ(βh); ``cdpo`` −(1−ε) log σ(βh) − ε log σ(−βh);
    ``ipo`` (h − 1/(2β))²; ``hinge`` max(0, 1 − βh); ``gdpo`` −log σ(β(2p−1)h);
    ``gipo`` ((2p−1)h − 1/(2β))². See each ``*_loss`` function for its source.

    Soft labels ``label`` (p ∈ [0.5, 1], ``None`` = hard) are used only by ``cdpo`` (as ε = 1 − p),
    ``gdpo`` and ``gipo``; ``dpo``, ``ipo`` and ``hinge`` ignore them. ``epsilon`` is used only by
    ``cdpo`` without labels; giving both a label and a non-zero ``epsilon`` to ``cdpo`` is ambiguous and
    raises ``ValueError`` (pass ``label=None`` to smooth hard labels with a fixed ε).
    """
    if kind not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss {kind!r}; expected one of: {', '.join(PREFERENCE_LOSSES)}")
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, reference_chosen, reference_rejected)}
    if len(shapes) != 1:
        raise ValueError(f"policy and reference log-probs must share one shape; got {sorted(shapes)}")
    chosen_ratio = policy_chosen.float() - reference_chosen.float()
    h = chosen_ratio - (policy_rejected.float() - reference_rejected.float())
    if kind == "dpo":
        return dpo_loss(h, beta)
    if kind == "cdpo":
        if label is not None:
            if not (isinstance(epsilon, int | float) and epsilon == 0):
                raise ValueError("cdpo: give either soft labels (then epsilon = 1 - p) or epsilon, not both")
            epsilon = 1.0 - torch.as_tensor(label, dtype=torch.float32, device=h.device)
        return cdpo_loss(h, beta, epsilon)
    if kind == "ipo":
        return ipo_loss(h, beta)
    if kind == "hinge":
        return hinge_loss(h, beta)
    if kind == "gdpo":
        return gdpo_loss(h, beta, label)
    return gipo_loss(h, beta, label)


def implicit_rewards(policy_logps: Tensor, reference_logps: Tensor, beta: float) -> Tensor:
    """DPO implicit reward ``r̂(x, y) = β (logπ(y|x) − logπ_ref(y|x))``, detached, float32, same shape.

    Used for logging (reward margins; the accuracy is :func:`implicit_accuracy`).

    Source: Rafailov et al. 2023, "Direct Preference Optimization", section 5.
    """
    return (beta * (policy_logps.float() - reference_logps.float())).detach()


TIE_BAND = 1e-4
"""Relative width of the float-noise band in :func:`implicit_accuracy` (about 1,700 float32 roundoffs)."""


def implicit_accuracy(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor,
                      reference_rejected: Tensor, band: float = TIE_BAND) -> Tensor:
    """1.0 for each pair the policy orders correctly beyond float noise, else 0.0; shape (B,).

    A pair counts when its margin exceeds a tie band that scales with the log-probs it is made of::

        h > τ,   τ = band · (|logπ(y_w)| + |logπ_ref(y_w)| + |logπ(y_l)| + |logπ_ref(y_l)|)

    The policy's and the reference's log-probs may come from different but equivalent computations (a
    precomputed reference pass and the training forward, or other kernels on another CPU), which agree only
    up to float32 rounding. At step 0 (policy = reference) h is that rounding and nothing else; without the
    band a CPU-dependent share of pairs would count as learned before any training. β > 0 does not change
    the sign of the implicit-reward margin β·h, so the band is applied to h.
    """
    pc, pr = policy_chosen.detach().float(), policy_rejected.detach().float()
    rc, rr = reference_chosen.detach().float(), reference_rejected.detach().float()
    h = (pc - rc) - (pr - rr)
    tau = band * (pc.abs() + rc.abs() + pr.abs() + rr.abs())
    return (h > tau).float()



# --------------------------------------------------------------------------------------------------
# Online RL: PPO and RLOO
# --------------------------------------------------------------------------------------------------
#
# Response tensors are (B, T) over response positions only. ``mask`` (B, T, float or bool) is 1 on the
# real response tokens (up to and including EOS) and 0 on the padding after EOS. Masked-out entries never
# reach a result, even when they hold inf or nan.


def _response_mask(mask: Tensor, like: Tensor) -> Tensor:
    """``mask`` as bool, checked against the shape of ``like``."""
    if mask.shape != like.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match tensor shape {tuple(like.shape)}")
    return mask.bool()


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is 1: ``Σ_{m=1} x / |{m = 1}|``, float32.

    ``dim=None`` reduces over every dimension (scalar result); otherwise over ``dim`` only. Where no entry
    is selected the result is 0 (not nan), and masked-out entries of ``x`` may hold any value.

    Source: the token-level averaging used by PPO for language models, Ziegler et al. 2019
    ("Fine-Tuning Language Models from Human Preferences").
    """
    m = _response_mask(mask, x)
    values = torch.where(m, x.float(), torch.zeros((), dtype=torch.float32, device=x.device))
    if dim is None:
        return values.sum() / m.sum().clamp(min=1)
    return values.sum(dim=dim) / m.sum(dim=dim).clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """Normalise ``x`` over its masked entries: ``(x − μ) / sqrt(σ² + 1e-8)``, float32, shape of ``x``.

    ``μ`` and ``σ²`` are the mean and the biased (divide-by-count) variance of the entries with mask 1,
    pooled over the whole tensor. ``shift_mean=False`` adds ``μ`` back, i.e. rescales without centring.
    Masked-out positions return 0; an all-zero mask returns all zeros.

    Source: batch advantage normalisation in PPO, Schulman et al. 2017 (as applied to language models in
    Ziegler et al. 2019).
    """
    m = _response_mask(mask, x)
    zero = torch.zeros((), dtype=torch.float32, device=x.device)
    values = torch.where(m, x.float(), zero)
    mean = masked_mean(values, m)
    var = masked_mean((values - mean) ** 2, m)
    out = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, zero)


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token KL estimator ``k1 = logπ(a) − logπ_ref(a)``, float32, same shape.

    For ``a ~ π`` its expectation is KL(π || π_ref); it is unbiased but has high variance and single
    samples can be negative.

    Source: Schulman 2020, "Approximating KL Divergence" (blog note), estimator k1.
    """
    return logp.float() - ref_logp.float()


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token KL estimator ``k3 = (r − 1) − log r`` with ``log r = logπ_ref(a) − logπ(a)``, float32.

    For ``a ~ π`` it is unbiased for KL(π || π_ref) (since E_π[r] = 1) and, because ``log r ≤ r − 1``,
    never negative; its variance is usually far below k1's. Computed as ``expm1(log r) − log r``.

    Source: Schulman 2020, "Approximating KL Divergence" (blog note), estimator k3.
    """
    log_r = ref_logp.float() - logp.float()
    return (torch.expm1(log_r) - log_r).clamp(min=0.0)


def per_token_rewards(score: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor, beta: float) -> Tensor:
    """RLHF per-token reward with a KL penalty, float32, shape (B, T):

        r_t = −β (logπ(a_t) − logπ_ref(a_t))          on response tokens (mask 1)
        r_T += score                                   at the last response token of each row

    ``score`` (B,) is the reward-model score of each response. Positions with mask 0 get 0, and a row whose
    mask is all zero gets nothing (not even its score). The result keeps whatever graph its inputs have;
    rollout code normally calls it under ``torch.no_grad()``.

    Source: Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences"; Ouyang et al. 2022
    (InstructGPT), eq. 2.
    """
    m = _response_mask(mask, logp)
    if score.shape != logp.shape[:1]:
        raise ValueError(f"score must have shape (B,) = {tuple(logp.shape[:1])}; got {tuple(score.shape)}")
    zero = torch.zeros((), dtype=torch.float32, device=logp.device)
    kl = torch.where(m, kl_k1(logp, ref_logp), zero)
    rewards = -beta * kl
    t = logp.shape[1]
    last = (t - 1) - m.flip(dims=(1,)).int().argmax(dim=1)  # index of the last response token
    has_tokens = m.any(dim=1)
    bonus = torch.where(has_tokens, score.float(), zero)
    return rewards.scatter_add(1, last.unsqueeze(1), bonus.unsqueeze(1))


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over response tokens; returns ``(advantages, returns)``, (B, T).

        δ_t = r_t + γ V_{t+1} − V_t,     A_t = Σ_{l≥0} (γλ)^l δ_{t+l} = δ_t + γλ A_{t+1},     R_t = A_t + V_t

    computed backwards in time. Positions with mask 0 are terminal: their value and advantage count as 0,
    so the last response token bootstraps from V = 0 and padding (whatever it holds) cannot leak in. Both
    outputs are 0 where the mask is 0. Rewards and values are detached: the results carry no graph.

    Source: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
    Estimation"; γ = 1, λ = 0.95 as in Ziegler et al. 2019.
    """
    m = _response_mask(mask, rewards)
    if values.shape != rewards.shape:
        raise ValueError(f"values shape {tuple(values.shape)} does not match rewards {tuple(rewards.shape)}")
    zero = torch.zeros((), dtype=torch.float32, device=rewards.device)
    r = torch.where(m, rewards.detach().float(), zero)
    v = torch.where(m, values.detach().float(), zero)
    advantages = torch.zeros_like(r)
    next_value = torch.zeros_like(r[:, 0])
    next_advantage = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        a_t = torch.where(m[:, t], delta + gamma * lam * next_advantage, zero)
        advantages[:, t] = a_t
        next_value = v[:, t]
        next_advantage = a_t
    returns = torch.where(m, advantages + v, zero)
    return advantages, returns


def _clipped_surrogate(ratio: Tensor, advantages: Tensor, clip: float,
                       clip_high: float | None = None) -> tuple[Tensor, Tensor]:
    """Per-element ``max(−A ρ, −A clip(ρ, 1−c, 1+c_high))`` (``c_high`` defaults to ``c``) and where the clipped
    term is strictly larger."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + (clip if clip_high is None else clip_high))
    return torch.maximum(unclipped, clipped), clipped > unclipped


def ppo_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip: float = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped policy loss, a scalar averaged over response tokens, and detached statistics.

    With the per-token ratio ``ρ_t = exp(logπ(a_t) − logπ_old(a_t))``:

        L = mean_{t: mask=1} max(−A_t ρ_t, −A_t clip(ρ_t, 1 − c, 1 + c))

    ``old_logp`` and ``advantages`` are treated as constants. Stats: ``clip_fraction`` (share of response
    tokens where the clipped term is the larger one, i.e. the gradient is cut), ``approx_kl`` (mean of
    k3 = (ρ − 1) − log ρ, which estimates KL(π_old || π) from samples of π_old) and ``ratio_mean``.

    Source: Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7 (written as a loss);
    token-level use for language models as in Ziegler et al. 2019.
    """
    m = _response_mask(mask, logp)
    zero = torch.zeros((), dtype=torch.float32, device=logp.device)
    log_ratio = torch.where(m, logp.float() - old_logp.detach().float(), zero)
    ratio = torch.exp(log_ratio)
    adv = torch.where(m, advantages.detach().float(), zero)
    per_token, clipped = _clipped_surrogate(ratio, adv, clip)
    loss = masked_mean(per_token, m)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean(clipped.float(), m),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, m),
            "ratio_mean": masked_mean(ratio, m),
        }
    return loss, stats


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped value loss, a scalar averaged over response tokens, and detached statistics:

        L = ½ · mean_{t: mask=1} max((V_t − R_t)², (clip(V_t, V_old,t − c, V_old,t + c) − R_t)²)

    ``old_values`` and ``returns`` are treated as constants. Stats: ``value_clip_fraction`` (share of
    response tokens where the clipped error is the larger one).

    Source: the value clipping of the PPO reference implementation (Dhariwal et al. 2017, OpenAI
    Baselines), as used for language models by Ziegler et al. 2019.
    """
    m = _response_mask(mask, values)
    zero = torch.zeros((), dtype=torch.float32, device=values.device)
    v = torch.where(m, values.float(), zero)
    v_old = torch.where(m, old_values.detach().float(), zero)
    ret = torch.where(m, returns.detach().float(), zero)
    v_clipped = v_old + (v - v_old).clamp(-clip, clip)
    err = (v - ret) ** 2
    err_clipped = (v_clipped - ret) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), m)
    with torch.no_grad():
        stats = {"value_clip_fraction": masked_mean((err_clipped > err).float(), m)}
    return loss, stats


def rloo_advantages(rewards: Tensor, k: int) -> Tensor:
    """REINFORCE leave-one-out advantages, float32, detached, shape (N,).

    ``rewards`` (N,) holds consecutive groups of ``k`` samples of the same prompt (N = P·k):

        A_i = R_i − (1/(k − 1)) Σ_{j ≠ i, same group} R_j

    so the advantages of a group sum to 0. Raises ``ValueError`` unless ``k ≥ 2`` and ``k`` divides N.

    Source: Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!"; Ahmadian et al. 2024,
    "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs".
    """
    if k < 2:
        raise ValueError(f"rloo_advantages needs k >= 2 samples per prompt; got k={k}")
    if rewards.dim() != 1 or rewards.numel() % k != 0:
        raise ValueError(f"rewards must be 1-D with a length divisible by k={k}; got {tuple(rewards.shape)}")
    groups = rewards.detach().float().view(-1, k)
    others = (groups.sum(dim=1, keepdim=True) - groups) / (k - 1)
    return (groups - others).reshape(-1)


def rloo_loss(
    seq_logp: Tensor, old_seq_logp: Tensor, advantages: Tensor, clip: float | None = 0.2
) -> tuple[Tensor, dict[str, Tensor]]:
    """Sequence-level RLOO loss, a scalar averaged over the N responses, and detached statistics.

    With ``ρ_i = exp(logπ(y_i) − logπ_old(y_i))`` (sequence log-probabilities, shape (N,)):

        clip = c:     L = mean_i max(−A_i ρ_i, −A_i clip(ρ_i, 1 − c, 1 + c))
        clip = None:  L = −mean_i A_i logπ(y_i)          (REINFORCE with the leave-one-out baseline)

    At ρ = 1 (the first step on a fresh batch) the clipped form has the same gradient as the plain one,
    ``−A_i ∇logπ(y_i)`` per sample. ``old_seq_logp`` and ``advantages`` are treated as constants (with
    ``clip=None`` ``old_seq_logp`` is unused). Stats: ``clip_fraction`` (0 when ``clip`` is None).

    Source: Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning
    from Human Feedback in LLMs"; clipping from Schulman et al. 2017.
    """
    if seq_logp.dim() != 1 or advantages.shape != seq_logp.shape:
        raise ValueError(
            f"rloo_loss expects seq_logp and advantages of one shape (N,); "
            f"got {tuple(seq_logp.shape)} and {tuple(advantages.shape)}"
        )
    adv = advantages.detach().float()
    if clip is None:
        loss = -(adv * seq_logp.float()).mean()
        return loss, {"clip_fraction": torch.zeros((), dtype=torch.float32, device=seq_logp.device)}
    ratio = torch.exp(seq_logp.float() - old_seq_logp.detach().float())
    per_sample, clipped = _clipped_surrogate(ratio, adv, clip)
    with torch.no_grad():
        stats = {"clip_fraction": clipped.float().mean()}
    return per_sample.mean(), stats


GRPO_AGGREGATIONS = ("grpo", "dr_grpo", "dapo")


def group_advantages(rewards: Tensor, group: int, *, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """GRPO's group-relative advantages, float32, detached, shape (N,).

    ``rewards`` (N,) holds consecutive groups of ``group`` samples of one prompt (N = P·G):

        A_i = (R_i − mean_group(R)) / (std_group(R) + eps)     (scale=True: GRPO)
        A_i =  R_i − mean_group(R)                             (scale=False: Dr. GRPO)

    The std is the sample standard deviation (divisor G − 1). A group whose rewards are all equal gets
    advantages 0 (no NaN): it carries no signal. Raises ``ValueError`` unless ``group ≥ 2`` divides N.

    Source: Shao et al. 2024, "DeepSeekMath" (GRPO, outcome supervision); Liu et al. 2025, "Understanding
    R1-Zero-Like Training: A Critical Perspective" (Dr. GRPO: no std scaling).
    """
    if group < 2:
        raise ValueError(f"group_advantages needs at least 2 samples per prompt; got group={group}")
    if rewards.dim() != 1 or rewards.numel() % group != 0:
        raise ValueError(f"rewards must be 1-D with a length divisible by group={group}; got {tuple(rewards.shape)}")
    g = rewards.detach().float().view(-1, group)
    centred = g - g.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (g.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def grpo_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, epsilon_low: float = 0.2,
    epsilon_high: float | None = None, aggregation: str = "grpo", max_length: int | None = None,
    ref_logp: Tensor | None = None, beta: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO's clipped surrogate with a sequence advantage on every token, a scalar, and detached statistics.

    With ``ρ_{i,t} = exp(logπ(o_{i,t}) − logπ_old(o_{i,t}))`` and ``A_i`` (N,) broadcast over the tokens of
    response i (``logp`` etc. are (N, T), ``mask`` marks the response tokens):

        l_{i,t} = max(−A_i ρ_{i,t}, −A_i clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high)) + β · k3_{i,t}

    where ``k3 = exp(logπ_ref − logπ) − (logπ_ref − logπ) − 1`` (added only when ``beta > 0``; needs
    ``ref_logp``). ``epsilon_high`` defaults to ``epsilon_low`` (symmetric clipping); DAPO's "clip-higher"
    takes it larger. The tokens' losses are aggregated as

        grpo:     (1/N) Σ_i (1/|o_i|) Σ_t l_{i,t}        (each response's mean, then the mean over responses)
        dapo:     Σ_{i,t} l_{i,t} / Σ_i |o_i|            (the mean over all tokens of the batch)
        dr_grpo:  Σ_{i,t} l_{i,t} / (N · max_length)     (a constant normaliser: no length bias)

    ``dr_grpo`` needs ``max_length`` (the longest response that could be sampled). Stats: ``clip_fraction``,
    ``ratio_mean`` and, with β > 0, ``kl_penalty`` (mean k3 per token).

    Source: Shao et al. 2024, "DeepSeekMath" (GRPO); Yu et al. 2025, "DAPO" (clip-higher, token-level loss);
    Liu et al. 2025 (Dr. GRPO); Schulman 2020 (k3).
    """
    if aggregation not in GRPO_AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; choose from {', '.join(GRPO_AGGREGATIONS)}")
    if aggregation == "dr_grpo" and not max_length:
        raise ValueError("aggregation 'dr_grpo' needs max_length, the longest response that could be sampled")
    if beta > 0 and ref_logp is None:
        raise ValueError("grpo_loss with beta > 0 needs ref_logp")
    m = _response_mask(mask, logp)
    zero = torch.zeros((), dtype=torch.float32, device=logp.device)
    log_ratio = torch.where(m, logp.float() - old_logp.detach().float(), zero)
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().float()[:, None].expand_as(ratio)
    per_token, clipped = _clipped_surrogate(ratio, adv, epsilon_low, epsilon_high)
    stats = {}
    if beta > 0:
        k3 = torch.where(m, kl_k3(logp, ref_logp.detach()), zero)
        per_token = per_token + beta * k3
        stats["kl_penalty"] = masked_mean(k3.detach(), m)  # per token; the rollout's "kl" is per sequence
    per_token = torch.where(m, per_token, zero)
    lengths = m.sum(dim=1)
    if aggregation == "grpo":
        loss = (per_token.sum(dim=1) / lengths.clamp(min=1)).mean()
    elif aggregation == "dapo":
        loss = per_token.sum() / lengths.sum().clamp(min=1)
    else:
        loss = per_token.sum() / (per_token.shape[0] * max_length)
    with torch.no_grad():
        stats.update(clip_fraction=masked_mean(clipped.float(), m), ratio_mean=masked_mean(ratio, m))
    return loss, stats


def kto_loss(
    policy_logps: Tensor, reference_logps: Tensor, desirable: Tensor, kl: Tensor | float, *, beta: float = 0.1,
    desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """KTO: a prospect-theory value of unpaired good and bad responses around a KL reference point; a scalar
    (the mean over the batch) and detached statistics.

    With ``r = logπ(y|x) − logπ_ref(y|x)`` (summed log-probs, (N,)) and the reference point ``z = max(kl, 0)``
    (no gradient: the caller estimates KL(π‖π_ref) on mismatched prompt/response pairs of the batch):

        desirable:    L = λ_D (1 − σ(β (r − z)))
        undesirable:  L = λ_U (1 − σ(β (z − r)))

    i.e. ``λ_y − v(x, y)`` of the paper. ``desirable`` (N,) is a bool mask. A batch with only one kind of
    example is fine. Stats: ``reward_desirable`` / ``reward_undesirable`` (mean β·r of each kind, 0 when
    absent) and ``kl`` (z).

    Source: Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", eq. 8.
    """
    _check_beta(beta)
    if policy_logps.shape != reference_logps.shape or desirable.shape != policy_logps.shape:
        raise ValueError("kto_loss expects policy_logps, reference_logps and desirable of one shape (N,)")
    z = torch.as_tensor(kl, dtype=torch.float32, device=policy_logps.device).detach().clamp(min=0)
    r = policy_logps.float() - reference_logps.detach().float()
    good = desirable.bool()
    losses = torch.where(good, desirable_weight * (1 - torch.sigmoid(beta * (r - z))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z - r))))
    with torch.no_grad():
        rewards = beta * r.detach()
        stats = {"reward_desirable": masked_mean(rewards, good), "reward_undesirable": masked_mean(rewards, ~good),
                 "kl": z}
    return losses.mean(), stats


def mean_logp(logps: Tensor, tokens: Tensor) -> Tensor:
    """Length-normalised log-likelihood ``s = logπ(y|x) / |y|`` (float32; a response of 0 tokens counts as 1),
    the reward of SimPO and the log-probability of ORPO's odds."""
    return logps.float() / tokens.float().clamp(min=1)


def simpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, chosen_tokens: Tensor, rejected_tokens: Tensor, *,
               beta: float = 2.0, gamma: float = 1.0) -> Tensor:
    """SimPO, reference-free; per pair (B,), float32. With the length-normalised log-likelihoods
    ``s = logπ(y|x) / |y|``:

        L = −log σ(β s_w − β s_l − γ)

    ``γ`` is the target reward margin (the paper reports it as γ/β; here it is the margin itself, in units of
    β·s). With γ = 0 this is −log σ(β (s_w − s_l)).

    Source: Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward", eq. 6.
    """
    _check_beta(beta)
    return -F.logsigmoid(beta * (mean_logp(chosen_logps, chosen_tokens) - mean_logp(rejected_logps, rejected_tokens))
                         - gamma)


def orpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, chosen_tokens: Tensor, rejected_tokens: Tensor, *,
              weight: float = 0.1) -> tuple[Tensor, Tensor]:
    """ORPO's preference term and its SFT term, per pair (B,) each, float32; the loss is ``sft + weight · or``.

    With the length-normalised probability ``P(y|x) = exp(logπ(y|x) / |y|)`` and
    ``log odds(y|x) = log P − log(1 − P)``:

        L_OR  = −log σ(log odds(y_w|x) − log odds(y_l|x))
        L_SFT = −logπ(y_w|x) / |y_w|                          (the chosen response's mean token NLL)

    Returns ``(weight · L_OR, L_SFT)``. ``log(1 − P)`` is computed as ``log1p(−P)``, with a mean log-prob
    above −1e-6 taken as −1e-6 (so P < 1 and the odds stay finite).

    Source: Hong, Lee & Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference Model", eq. 6-7.
    """
    mean_w, mean_l = mean_logp(chosen_logps, chosen_tokens), mean_logp(rejected_logps, rejected_tokens)

    def log_odds(mean: Tensor) -> Tensor:
        return mean - torch.log1p(-torch.exp(mean.clamp(max=-1e-6)))

    ratio = -F.logsigmoid(log_odds(mean_w) - log_odds(mean_l))
    return weight * ratio, -mean_w


def adaptive_kl_beta(
    beta: float, kl: float | Tensor, target: float, n_samples: int, horizon: int
) -> float:
    """Adaptive KL coefficient, proportional control towards a target KL:

        e = clip(KL / KL_target − 1, −0.2, 0.2),     β ← β (1 + e · n / horizon)

    ``kl`` is the measured KL of the last batch, ``n_samples`` its size. Returns the new β as a float.

    Source: Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", section 2.2.
    """
    if not target > 0 or not horizon > 0:
        raise ValueError(f"target and horizon must be > 0; got target={target}, horizon={horizon}")
    error = min(max(float(kl) / target - 1.0, -0.2), 0.2)
    return float(beta) * (1.0 + error * n_samples / horizon)


def token_entropy(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(z)`` at each position, float32, shape ``logits.shape[:-1]`` (`entropy_from_logprobs`
    of ``log_softmax(z)``). Logits of −inf (banned tokens) contribute 0.

    Source: the Shannon entropy of the policy's next-token distribution, logged as an entropy statistic
    in PPO (Schulman et al. 2017).
    """
    return entropy_from_logprobs(torch.log_softmax(logits.float(), dim=-1))


def entropy_from_logprobs(logp: Tensor) -> Tensor:
    """Entropy ``H = −Σ_v p_v log p_v`` of distributions given by their log-probabilities (last axis), in
    ``logp``'s dtype: one exp and one dot product per position, for callers that already hold the log-softmax
    (the sampler), also under autocast, which would run the dot product in lower precision. Log-probs of −inf
    (p = 0) contribute 0."""
    with torch.autocast(logp.device.type, enabled=False):
        return -torch.linalg.vecdot(logp.exp(), logp.clamp_min(torch.finfo(logp.dtype).min))


__all__ = [
    "IGNORE_INDEX",
    "PREFERENCE_LOSSES",
    "bradley_terry_loss",
    "cdpo_loss",
    "coh_loss",
    "dpo_loss",
    "gdpo_loss",
    "gipo_loss",
    "hinge_loss",
    "implicit_rewards",
    "ipo_loss",
    "preference_loss",
    "ranking_loss",
    "sft_loss",
    "token_logprobs",
    # online RL: PPO and RLOO
    "adaptive_kl_beta",
    "gae",
    "kl_k1",
    "kl_k3",
    "masked_mean",
    "masked_whiten",
    "per_token_rewards",
    "ppo_policy_loss",
    "ppo_value_loss",
    "rloo_advantages",
    "rloo_loss",
    # GRPO, KTO, SimPO, ORPO
    "GRPO_AGGREGATIONS",
    "group_advantages",
    "grpo_loss",
    "kto_loss",
    "mean_logp",
    "orpo_loss",
    "simpo_loss",
    "token_entropy",
    "entropy_from_logprobs",
]
