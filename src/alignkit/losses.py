"""Loss functions: pure tensor-in, tensor-out units, each with its formula and source.

Nothing here touches a model, a file or a config object. Every function computes in float32 whatever the
input dtype. Unless a docstring says otherwise a loss returns one value per example, shape (B,), and the
caller chooses the reduction.

Notation (see ``ALGORITHMS.md``): ``σ`` is the logistic function, ``β > 0`` the preference temperature,
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


def _shifted_nll(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Negative log-likelihood per shifted position (B, L-1) and the mask of target positions."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (B, L, V) and labels (B, L); "
            f"got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    targets = labels[:, 1:]
    nll = -token_logprobs(logits[:, :-1], targets)
    return nll, targets != IGNORE_INDEX


def sft_loss(logits: Tensor, labels: Tensor, *, reduction: str = "token") -> Tensor:
    """Next-token cross-entropy on response tokens only; returns a scalar.

    ``labels[:, t]`` is the token at position ``t`` (NOT shifted) with ``-100`` on masked positions
    (prompt, padding); the function shifts internally, so ``logits[:, t]`` predicts ``labels[:, t + 1]``:

        L = −(1/N) Σ_{b,t: y_{b,t+1} ≠ −100} log p(y_{b,t+1} | y_{b,≤t})

    ``reduction="token"``: mean over all target tokens in the batch (N = their count).
    ``reduction="sequence"``: mean over each sequence's target tokens, then mean over the sequences that
    have at least one target token. A batch with no target token gives 0 (still attached to the graph).

    Source: supervised fine-tuning on demonstrations, Ouyang et al. 2022 (InstructGPT).
    """
    nll, mask = _shifted_nll(logits, labels)
    if reduction == "token":
        return nll.sum() / mask.sum().clamp(min=1)
    if reduction == "sequence":
        counts = mask.sum(dim=1)
        per_sequence = nll.sum(dim=1) / counts.clamp(min=1)
        has_targets = counts > 0
        return (per_sequence * has_targets).sum() / has_targets.sum().clamp(min=1)
    raise ValueError(f"unknown reduction {reduction!r}; expected 'token' or 'sequence'")


def coh_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Chain of Hindsight cross-entropy; returns a scalar.

    Same convention as :func:`sft_loss` (unshifted labels, ``-100`` on the prompt and on the feedback
    phrases such as "A helpful answer:"), so only the model-output tokens, good and bad, are scored:

        L = −(1/|S|) Σ_{s ∈ S} (1/|T_s|) Σ_{t ∈ T_s} log p(y_{s,t} | y_{s,<t})

    i.e. averaged per sequence, then over the sequences S that have target tokens T_s.

    Source: Liu, Sferrazza & Abbeel 2023, "Chain of Hindsight Aligns Language Models with Feedback".
    """
    return sft_loss(logits, labels, reduction="sequence")


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

    Used for logging (reward margins, accuracy = share of pairs with r̂_chosen > r̂_rejected).

    Source: Rafailov et al. 2023, "Direct Preference Optimization", section 5.
    """
    return (beta * (policy_logps.float() - reference_logps.float())).detach()


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
]
