"""sequence_logprobs / reward_scores on padded batches against an independent per-sequence computation."""

from __future__ import annotations

import pytest
import torch

from alignkit.data.collate import pad_rows
from alignkit.models.logprobs import (
    last_token_index,
    position_ids_from_mask,
    reward_scores,
    sequence_logprobs,
)

ATOL = 1e-4
PAD = 0  # <pad> of the tiny tokenizer
EOS = 2  # <|im_end|> of the tiny tokenizer

# (prompt ids, response ids): prompts AND responses of different lengths
PAIRS = [
    ([5, 17, 30, 44, 51], [60, 71, 82]),
    ([9, 13], [100, 101, 102, 103, 104, 105, 106]),
    ([21, 22, 23, 24, 25, 26, 27, 28], [40]),
    ([33, 34, 35], [90, 91, 92, 93]),
]


def rows_of(pairs):
    return [(p + r, [0] * len(p) + [1] * len(r)) for p, r in pairs]


@torch.no_grad()
def reference_token_logprobs(model, ids: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t = 1..n-1, from one unpadded forward pass (no mask, default positions)."""
    x = torch.tensor([ids])
    logits = model(input_ids=x).logits[0, :-1].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, x[0, 1:, None]).squeeze(-1)


def reference_sum(model, ids: list[int], mask: list[int], temperature: float = 1.0) -> float:
    lp = reference_token_logprobs(model, ids, temperature)
    return float((lp * torch.tensor(mask[1:], dtype=torch.float32)).sum())


def batch_logprobs(model, batch, **kw):
    with torch.no_grad():
        return sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"], **kw)


# ---- sequence_logprobs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_matches_each_sequence_alone(causal_lm, side):
    rows = rows_of(PAIRS)
    batch = pad_rows(rows, PAD, side=side)
    assert (batch["attention_mask"] == 0).any()  # the batch really is padded
    got = batch_logprobs(causal_lm, batch)
    assert got.dtype == torch.float32 and got.shape == (len(rows),)
    want = torch.tensor([reference_sum(causal_lm, ids, mask) for ids, mask in rows])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # sanity: a sum of several log-probs over a ~400-token vocabulary is clearly negative
    assert (got < -1.0).all()


@pytest.mark.parametrize("side", ["right", "left"])
def test_prompt_is_masked(causal_lm, side):
    rows = rows_of(PAIRS)
    batch = pad_rows(rows, PAD, side=side)
    base = batch_logprobs(causal_lm, batch)
    row = 0
    prompt, _ = PAIRS[row]
    ids = rows[row][0]
    # column of the last prompt token of row 0 in the padded batch
    offset = 0 if side == "right" else batch["input_ids"].shape[1] - len(ids)
    col = offset + len(prompt) - 1
    assert batch["response_mask"][row, col] == 0 and batch["input_ids"][row, col] == prompt[-1]
    flipped = {k: v.clone() for k, v in batch.items()}
    flipped["response_mask"][row, col] = 1
    got = batch_logprobs(causal_lm, flipped)
    token_lp = float(reference_token_logprobs(causal_lm, ids)[len(prompt) - 2])  # log p(prompt[-1] | prompt[:-1])
    assert token_lp < -0.1  # the change is visible at this tolerance
    assert got[row].item() == pytest.approx(base[row].item() + token_lp, abs=ATOL)
    torch.testing.assert_close(got[1:], base[1:], atol=ATOL, rtol=0)  # other rows untouched


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_contributes_nothing(causal_lm, side):
    rows = rows_of(PAIRS)
    batch = pad_rows(rows, PAD, side=side)
    base = batch_logprobs(causal_lm, batch)
    extra = 5
    wide = {}
    for k, v in batch.items():
        pad = torch.zeros((v.shape[0], extra), dtype=v.dtype)
        if k == "input_ids":
            pad.fill_(PAD)
        wide[k] = torch.cat([v, pad], 1) if side == "right" else torch.cat([pad, v], 1)
    torch.testing.assert_close(batch_logprobs(causal_lm, wide), base, atol=ATOL, rtol=0)
    # whatever token ids sit under padding (and even a response-mask bit there) are ignored
    noisy = {k: v.clone() for k, v in wide.items()}
    where = noisy["attention_mask"] == 0
    noisy["input_ids"][where] = 77
    noisy["response_mask"][where] = 1
    torch.testing.assert_close(batch_logprobs(causal_lm, noisy), base, atol=ATOL, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_empty_prompt_row(causal_lm, side):
    """A row with no prompt: its first token has no context and is never scored, for either padding side."""
    pairs = [([], [60, 71, 82, 90]), ([9, 13, 21, 22, 23, 24], [100, 101])]
    rows = rows_of(pairs)
    got = batch_logprobs(causal_lm, pad_rows(rows, PAD, side=side))
    want = torch.tensor([reference_sum(causal_lm, ids, mask) for ids, mask in rows])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_temperature_divides_logits(causal_lm, side):
    rows = rows_of(PAIRS)
    batch = pad_rows(rows, PAD, side=side)
    got = batch_logprobs(causal_lm, batch, temperature=0.7)
    want = torch.tensor([reference_sum(causal_lm, ids, mask, temperature=0.7) for ids, mask in rows])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    at_one = torch.tensor([reference_sum(causal_lm, ids, mask) for ids, mask in rows])
    assert (got - at_one).abs().max() > 1e-2  # T=0.7 is really different from T=1 (how much depends on the weights)


@pytest.mark.parametrize("side", ["right", "left"])
def test_return_tokens(causal_lm, side):
    rows = rows_of(PAIRS)
    batch = pad_rows(rows, PAD, side=side)
    seq, tok = batch_logprobs(causal_lm, batch, return_tokens=True)
    B, L = batch["input_ids"].shape
    assert tok.shape == (B, L - 1) and tok.dtype == torch.float32
    torch.testing.assert_close(tok.sum(-1), seq, atol=1e-5, rtol=0)
    scored = (batch["response_mask"][:, 1:] == 1) & (batch["attention_mask"][:, 1:] == 1)
    assert (tok[~scored] == 0).all()
    assert (tok[scored] < 0).all()
    # per-token values equal the unpadded reference at the response positions
    for b, (ids, mask) in enumerate(rows):
        offset = 0 if side == "right" else L - len(ids)
        ref = reference_token_logprobs(causal_lm, ids)
        resp = [t for t in range(1, len(ids)) if mask[t]]
        got = tok[b, [offset + t - 1 for t in resp]]
        torch.testing.assert_close(got, ref[[t - 1 for t in resp]], atol=ATOL, rtol=0)
        assert int(scored[b].sum()) == len(resp)


# ---- reward_scores --------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["llama", "gpt2"])
def reward_model(request, tiny_model, tiny_gpt2):
    from transformers import AutoModelForSequenceClassification

    path = tiny_model if request.param == "llama" else tiny_gpt2
    torch.manual_seed(1)  # the score head is newly initialised
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32).eval()
    return model


@torch.no_grad()
def score_alone(model, ids: list[int]) -> float:
    """The head applied to the final position of the unpadded sequence (backbone + head, no pad lookup)."""
    base = getattr(model, model.base_model_prefix)
    hidden = base(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    return float(model.score(hidden).squeeze())


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_reward_scores_read_last_real_token(reward_model, side, pad_is_eos):
    pad = EOS if pad_is_eos else PAD
    # sequences end with EOS, of different lengths
    seqs = [[5, 17, 30, 44, EOS], [9, 13, 100, 101, 102, 103, 104, 105, EOS], [21, 40, EOS]]
    batch = pad_rows([(s, [1] * len(s)) for s in seqs], pad, side=side)
    with torch.no_grad():
        got = reward_scores(reward_model, batch["input_ids"], batch["attention_mask"])
    assert got.shape == (len(seqs),) and got.dtype == torch.float32
    want = torch.tensor([score_alone(reward_model, s) for s in seqs])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # the scores are not all the same (a wrong position would not necessarily be noticed otherwise)
    assert (want.max() - want.min()) > 1e-3
    # and reading the token before EOS would give a different answer
    before_eos = torch.tensor([score_alone(reward_model, s[:-1]) for s in seqs])
    assert (got - before_eos).abs().max() > 1e-3


def test_reward_scores_through_peft(tiny_model):
    """A peft-wrapped (LoRA) reward model is unwrapped; a zero-initialised adapter changes nothing."""
    pytest.importorskip("peft")
    from transformers import AutoModelForSequenceClassification

    from alignkit.models.load import apply_lora

    torch.manual_seed(2)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1).eval()
    seqs = [[5, 17, 30, EOS], [9, 13, 100, 101, 102, EOS]]
    want = torch.tensor([score_alone(model, s) for s in seqs])
    wrapped = apply_lora(model, r=4, alpha=8, reward_head=True).eval()
    batch = pad_rows([(s, [1] * len(s)) for s in seqs], EOS, side="right")
    with torch.no_grad():
        got = reward_scores(wrapped, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


# ---- index helpers --------------------------------------------------------------------------------------
def test_last_token_index():
    mask = torch.tensor([
        [1, 1, 1, 0, 0],  # right padded
        [0, 0, 1, 1, 1],  # left padded
        [1, 1, 1, 1, 1],  # no padding
        [0, 1, 0, 0, 0],  # a single token
        [0, 0, 0, 0, 1],
    ])
    assert last_token_index(mask).tolist() == [2, 4, 4, 1, 4]
    assert last_token_index(mask.bool()).tolist() == [2, 4, 4, 1, 4]


def test_position_ids_from_mask():
    mask = torch.tensor([
        [1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [0, 0, 0, 0, 1],
    ])
    assert position_ids_from_mask(mask).tolist() == [
        [0, 1, 2, 0, 0],
        [0, 0, 0, 1, 2],
        [0, 1, 2, 3, 4],
        [0, 0, 0, 0, 0],
    ]


# ---- the chunked LM head: same values and gradients as the model's own full-vocabulary logits ----------
@pytest.mark.parametrize("keep", [0, 1 << 30], ids=["recomputed", "kept"])
@pytest.mark.parametrize("chunk", [1, 3, 512])
def test_chunked_head_matches_full_logits_values_and_gradients(causal_lm, chunk, keep, monkeypatch):
    import alignkit.models.logprobs as lp

    monkeypatch.setattr(lp, "HEAD_CHUNK", chunk)
    monkeypatch.setattr(lp, "HEAD_KEEP_BYTES", keep)  # 0: every chunk checkpointed; 1 GB: logits kept
    calls = []
    real_chunk = lp._chunk_logprobs
    monkeypatch.setattr(lp, "_chunk_logprobs", lambda *a: calls.append(a[0].shape[0]) or real_chunk(*a))
    batch = pad_rows(rows_of(PAIRS), PAD, side="left")
    ids, att, resp = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    params = [p for p in causal_lm.parameters() if p.requires_grad]

    def full_path():  # the model's own forward: (B, L, V) logits, log-softmax, gather
        logits = causal_lm(input_ids=ids, attention_mask=att, position_ids=position_ids_from_mask(att)).logits
        logp = torch.log_softmax(logits[:, :-1].float() / 0.7, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        mask = (resp[:, 1:] * att[:, 1:] * att[:, :-1]).float()
        return (logp * mask).sum(-1)

    want = full_path()
    want_grads = torch.autograd.grad((want * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum(), params)
    got = sequence_logprobs(causal_lm, ids, att, resp, temperature=0.7)
    got_grads = torch.autograd.grad((got * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum(), params)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    scored = int((resp[:, 1:] * att[:, 1:] * att[:, :-1]).sum())  # 15 response tokens in PAIRS
    assert max(calls) == min(chunk, scored)  # chunked as asked
    assert sum(calls) == (2 * scored if keep == 0 else scored)  # the backward recomputes each chunk, or not
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_response_logprobs_entropy_matches_full_softmax(causal_lm):
    from alignkit.losses import token_entropy
    from alignkit.models.logprobs import response_logprobs

    batch = pad_rows(rows_of(PAIRS), PAD, side="left")
    ids, att = batch["input_ids"], batch["attention_mask"]
    width = 8  # every prompt fits in the left-padded first 8 columns
    resp = batch["response_mask"][:, width:]
    with torch.no_grad():
        logp, ent = response_logprobs(causal_lm, ids, att, width, resp, temperature=1.3, entropy=True)
        logits = causal_lm(input_ids=ids, attention_mask=att, position_ids=position_ids_from_mask(att)).logits
        z = logits[:, width - 1 : -1].float() / 1.3
        want = torch.log_softmax(z, -1).gather(-1, ids[:, width:, None]).squeeze(-1) * resp
        torch.testing.assert_close(logp, want, atol=1e-5, rtol=0)
        torch.testing.assert_close(ent, token_entropy(z) * resp, atol=1e-5, rtol=0)
    # with gradients on (the checkpointed path), the same values, and the log-probs carry a gradient
    logp_g, ent_g = response_logprobs(causal_lm, ids, att, width, resp, temperature=1.3, entropy=True)
    assert logp_g.requires_grad and not ent_g.requires_grad
    torch.testing.assert_close(logp_g.detach(), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent_g, ent, atol=1e-6, rtol=0)


def test_sft_step_equals_cross_entropy_on_full_logits(causal_lm):
    """The SFT step (chunked head on response positions) against torch's cross-entropy on the model's full logits:
    same loss and same gradients."""
    import torch.nn.functional as F

    from alignkit.data.collate import collate_sft
    from alignkit.train.sft import sft_step

    batch = collate_sft([{"input_ids": p + r, "response_mask": [0] * len(p) + [1] * len(r)} for p, r in PAIRS],
                        pad_id=PAD)
    params = [p for p in causal_lm.parameters() if p.requires_grad]
    got, _ = sft_step(causal_lm, batch)
    got_grads = torch.autograd.grad(got, params)
    att = batch["attention_mask"]
    logits = causal_lm(input_ids=batch["input_ids"], attention_mask=att, position_ids=position_ids_from_mask(att)).logits
    labels = batch["labels"]
    want = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    want_grads = torch.autograd.grad(want, params)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
