"""Per-sequence log-probabilities and reward-model scores from a forward pass.

Conventions (DESIGN.md): a response's log-probability is the SUM of its tokens' log-probabilities, prompt and
padding masked, computed in float32 whatever the model's dtype. Both left and right padding work: positions
are taken from the attention mask.
"""

from __future__ import annotations

import torch

from alignkit.losses import token_logprobs
from alignkit.models.load import unwrap


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens of each row (left padding shifts them), padding gets 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0).masked_fill(attention_mask == 0, 0)


def sequence_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_tokens: bool = False,
):
    """Summed log p(response | prompt) per row, shape (B,), float32.

    `response_mask[b, t] = 1` marks tokens that belong to the response (they are scored); the token at t is
    predicted by the logits at t-1. With `return_tokens=True` also returns per-token log-probs (B, L-1)
    aligned with input_ids[:, 1:] and zero outside the response."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    logits = out.logits[:, :-1]
    if temperature != 1.0:
        logits = logits / temperature
    # the predicting position must be a real token too: with left padding and an empty prompt the first
    # response token would otherwise be scored from a pad position's logits
    real = attention_mask.bool()
    mask = response_mask[:, 1:].bool() & real[:, 1:] & real[:, :-1]
    labels = input_ids[:, 1:].masked_fill(~mask, -100)
    tok = token_logprobs(logits, labels)
    seq = tok.sum(-1)
    return (seq, tok) if return_tokens else seq


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token in each row, for left- or right-padded batches."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def _hidden_and_head(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Last hidden states of a scalar-head model's backbone, and its `score` head (peft-wrapped or not)."""
    base = unwrap(model)
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
    return hidden, base.score


def reward_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar reward per row read at the last real token (not at the first pad: pad may equal EOS).

    `model` is an `AutoModelForSequenceClassification` with num_labels=1 (possibly peft-wrapped): the
    backbone's last hidden state goes through its `score` head."""
    hidden, head = _hidden_and_head(model, input_ids, attention_mask)
    idx = last_token_index(attention_mask)
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    return head(last).squeeze(-1).float()


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
                      response_mask: torch.Tensor, *, temperature: float = 1.0, entropy: bool = False):
    """Per-token log-probs (B, T) of the response columns `input_ids[:, prompt_width:]` at `temperature`,
    zero where `response_mask` is 0; with `entropy=True` also the per-token entropy (B, T) of the same
    distribution. Only the response positions' logits are kept."""
    from alignkit.losses import token_entropy

    keep = input_ids.shape[1] - prompt_width + 1  # the LM head runs on the response positions only
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False, logits_to_keep=keep)
    logits = out.logits[:, -keep:-1]
    if temperature != 1.0:
        logits = logits / temperature
    labels = input_ids[:, prompt_width:].masked_fill(response_mask == 0, -100)
    logp = token_logprobs(logits, labels)
    if not entropy:
        return logp
    return logp, token_entropy(logits.detach()) * response_mask


def response_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int) -> torch.Tensor:
    """Value estimates (B, T) for the response tokens from a scalar-head model: V_t is read at the position
    that predicts response token t (the state before the token is chosen)."""
    hidden, head = _hidden_and_head(model, input_ids, attention_mask)
    return head(hidden[:, prompt_width - 1 : -1]).squeeze(-1).float()
