"""HFBackend rollouts: log-probs against fresh forward passes, per-row EOS stopping, left padding, greedy
decoding, seeding, and the top-k / top-p filter."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.models.logprobs import response_logprobs
from alignkit.rollout.engine import HFBackend, Rollout, SamplingParams, filter_logits

ATOL = 1e-4
PAD = 0  # <pad> of the tiny tokenizer
EOS = 2  # <|im_end|> of the tiny tokenizer
NEVER = -1  # an eos_id no token can equal: every row runs to max_new_tokens

# prompts of different lengths, so the engine has to left-pad
PROMPTS = [
    [5, 17, 30, 44, 51],
    [9, 13],
    [21, 22, 23, 24, 25, 26, 27, 28],
    [33, 34, 35],
    [70, 81, 92, 103, 114, 125],
    [140],
]


class EosBiased(torch.nn.Module):
    """Wraps a causal LM and adds `bias` to one token's logit, so that a randomly initialised model emits that
    token often enough for sampled rows to stop at different steps. It is still an ordinary model for the
    engine and for `response_logprobs` (same keyword call, same outputs)."""

    def __init__(self, inner, token: int, bias: float):
        super().__init__()
        self.inner = inner
        self.token = token
        self.bias = bias

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        shift = torch.zeros(out.logits.shape[-1], dtype=out.logits.dtype, device=out.logits.device)
        shift[self.token] = self.bias
        out.logits = out.logits + shift
        return out


def generate(model, prompts, *, eos_id=EOS, **params) -> Rollout:
    return HFBackend().generate(model, prompts, SamplingParams(**params), pad_id=PAD, eos_id=eos_id)


@torch.no_grad()
def row_logprobs(model, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    """log softmax(logits / T)[token] of each response token, from ONE unpadded forward pass over this row's
    real tokens only (no attention mask, default positions)."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0].float()
    predicting = logits[len(prompt) - 1 : len(prompt) + len(response) - 1] / temperature
    return torch.log_softmax(predicting, dim=-1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def check_layout(ro: Rollout, prompts: list[list[int]], eos_id: int, max_new_tokens: int) -> None:
    """Everything the Rollout layout promises, row by row, from the tokens alone."""
    n = len(prompts)
    width = max(len(p) for p in prompts)
    steps = ro.responses.shape[1]
    assert ro.prompt_width == width
    assert ro.input_ids.shape == ro.attention_mask.shape == (n, width + steps)
    assert ro.response_mask.shape == ro.logprobs.shape == (n, steps)
    assert ro.finished.shape == (n,) and ro.finished.dtype == torch.bool
    assert ro.logprobs.dtype == torch.float32
    assert 1 <= steps <= max_new_tokens
    # the batch stops as soon as every row is done, else at max_new_tokens: the last step had a live row
    assert bool(ro.response_mask[:, -1].any())
    if bool(ro.finished.all()):
        assert steps == int(ro.lengths.max())
    else:
        assert steps == max_new_tokens
    for b, prompt in enumerate(prompts):
        lead = width - len(prompt)
        # left-padded prompt
        assert ro.input_ids[b, :lead].tolist() == [PAD] * lead
        assert ro.input_ids[b, lead:width].tolist() == prompt
        response = ro.responses[b].tolist()
        if eos_id in response:
            length = response.index(eos_id) + 1  # EOS belongs to the response
            assert bool(ro.finished[b])
        else:
            length = steps
            assert not bool(ro.finished[b])
        assert ro.response_mask[b].tolist() == [1] * length + [0] * (steps - length)
        assert response[length:] == [PAD] * (steps - length)
        assert int(ro.lengths[b]) == length
        # attention: prompt without its left padding, then the response up to and including EOS
        expected = [0] * lead + [1] * len(prompt) + [1] * length + [0] * (steps - length)
        assert ro.attention_mask[b].tolist() == expected
        assert ro.logprobs[b, length:].abs().sum() == 0
        assert torch.isfinite(ro.logprobs[b, :length]).all() and (ro.logprobs[b, :length] <= 0).all()
    full = ro.full_response_mask()
    assert full.shape == ro.input_ids.shape
    assert full[:, :width].abs().sum() == 0
    assert torch.equal(full[:, width:], ro.response_mask.long())


# ---------------------------------------------------------------------------------------------- log-probs


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_logprobs_match_fresh_forward_pass(causal_lm, temperature):
    model = EosBiased(causal_lm, EOS, bias=4.5)
    torch.manual_seed(1234)
    ro = generate(model, PROMPTS, max_new_tokens=12, temperature=temperature)
    check_layout(ro, PROMPTS, EOS, 12)
    # the test is only meaningful with rows of different lengths, some stopped by EOS
    assert len(set(ro.lengths.tolist())) > 1 and bool(ro.finished.any())

    # (a) the training-side recomputation over the padded rollout
    with torch.no_grad():
        recomputed = response_logprobs(model, ro.input_ids, ro.attention_mask, ro.prompt_width,
                                       ro.response_mask, temperature=temperature)
    torch.testing.assert_close(ro.logprobs, recomputed, atol=ATOL, rtol=0)

    # (b) each row alone, without padding, up to and including its EOS
    for b, prompt in enumerate(PROMPTS):
        length = int(ro.lengths[b])
        expected = row_logprobs(model, prompt, ro.responses[b, :length].tolist(), temperature)
        torch.testing.assert_close(ro.logprobs[b, :length], expected, atol=ATOL, rtol=0)
        assert ro.logprobs[b, length:].abs().sum() == 0


def test_logprobs_are_not_those_of_another_temperature(causal_lm):
    """Guards the test above: log-probs at T=0.7 really differ from those at T=1 on the same tokens."""
    model = EosBiased(causal_lm, EOS, bias=4.5)
    torch.manual_seed(7)
    ro = generate(model, PROMPTS, max_new_tokens=6, temperature=0.7)
    with torch.no_grad():
        at_one = response_logprobs(model, ro.input_ids, ro.attention_mask, ro.prompt_width, ro.response_mask)
    assert (ro.logprobs - at_one).abs().max() > 1e-2


# ---------------------------------------------------------------------------------- EOS and stopping


def pick_eos(responses: torch.Tensor) -> int:
    """A token that some rows emit and others never do, preferring one first emitted late (longer prefix)."""
    rows = [r.tolist() for r in responses]
    best, best_at = None, -1
    for tok in sorted({t for r in rows for t in r}):
        holders = [r for r in rows if tok in r]
        if 0 < len(holders) < len(rows):
            at = max(r.index(tok) for r in holders)
            if at > best_at:
                best, best_at = tok, at
    assert best is not None, "every greedy row emits the same tokens: cannot force a partial early stop"
    return best


def test_greedy_rows_stop_independently_at_eos(causal_lm):
    max_new = 10
    free = generate(causal_lm, PROMPTS, eos_id=NEVER, max_new_tokens=max_new, greedy=True)
    assert free.responses.shape[1] == max_new and not bool(free.finished.any())
    assert free.response_mask.all()
    eos = pick_eos(free.responses)

    ro = generate(causal_lm, PROMPTS, eos_id=eos, max_new_tokens=max_new, greedy=True)
    check_layout(ro, PROMPTS, eos, max_new)
    assert bool(ro.finished.any()) and not bool(ro.finished.all())
    assert ro.responses.shape[1] == max_new  # some row never finished
    for b in range(len(PROMPTS)):
        full = free.responses[b].tolist()
        # greedy is a prefix-deterministic function of the row: the run with EOS is the free run cut there
        length = full.index(eos) + 1 if eos in full else max_new
        assert bool(ro.finished[b]) == (eos in full)
        assert ro.responses[b, :length].tolist() == full[:length]
        torch.testing.assert_close(ro.logprobs[b, :length], free.logprobs[b, :length], atol=ATOL, rtol=0)


def test_greedy_row_alone_equals_its_row_in_the_batch(causal_lm):
    """Padding, masking and positions must not leak between rows: each prompt decoded alone gives the same
    tokens and log-probs as its row of the left-padded batch (greedy, so no RNG is involved)."""
    max_new = 10
    free = generate(causal_lm, PROMPTS, eos_id=NEVER, max_new_tokens=max_new, greedy=True)
    eos = pick_eos(free.responses)
    batch = generate(causal_lm, PROMPTS, eos_id=eos, max_new_tokens=max_new, greedy=True, temperature=0.7)
    for b, prompt in enumerate(PROMPTS):
        alone = generate(causal_lm, [prompt], eos_id=eos, max_new_tokens=max_new, greedy=True, temperature=0.7)
        check_layout(alone, [prompt], eos, max_new)
        length = int(alone.lengths[0])
        assert int(batch.lengths[b]) == length
        assert bool(batch.finished[b]) == bool(alone.finished[0])
        assert batch.responses[b, :length].tolist() == alone.responses[0, :length].tolist()
        torch.testing.assert_close(batch.logprobs[b, :length], alone.logprobs[0, :length], atol=ATOL, rtol=0)


def test_batch_ends_when_every_row_finished(causal_lm):
    """With EOS very likely every row stops early: the batch runs exactly as long as its longest response."""
    model = EosBiased(causal_lm, EOS, bias=5.5)
    torch.manual_seed(3)
    max_new = 40
    ro = generate(model, PROMPTS, max_new_tokens=max_new)
    check_layout(ro, PROMPTS, EOS, max_new)
    assert bool(ro.finished.all())
    assert ro.responses.shape[1] == int(ro.lengths.max()) < max_new
    assert len(set(ro.lengths.tolist())) > 1  # they did stop at different steps
    # every row's last real token is EOS, and each row holds exactly one EOS
    for b in range(len(PROMPTS)):
        length = int(ro.lengths[b])
        assert int(ro.responses[b, length - 1]) == EOS
        assert ro.responses[b].tolist().count(EOS) == 1


def test_max_new_tokens_caps_unfinished_rows(causal_lm):
    ro = generate(causal_lm, PROMPTS, eos_id=NEVER, max_new_tokens=5)
    check_layout(ro, PROMPTS, NEVER, 5)
    assert ro.responses.shape[1] == 5 and not bool(ro.finished.any())
    assert ro.lengths.tolist() == [5] * len(PROMPTS)


# ---------------------------------------------------------------------------------------------- greedy


@torch.no_grad()
def test_greedy_is_stepwise_argmax_without_cache(causal_lm):
    prompt, steps, temperature = [21, 22, 23, 24], 6, 0.7
    ids, logps = list(prompt), []
    for _ in range(steps):
        logits = causal_lm(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].float()
        tok = int(logits.argmax())
        logps.append(float(torch.log_softmax(logits / temperature, dim=-1)[tok]))
        ids.append(tok)
    ro = generate(causal_lm, [prompt], eos_id=NEVER, max_new_tokens=steps, greedy=True, temperature=temperature)
    assert ro.responses[0].tolist() == ids[len(prompt):]
    # greedy picks the argmax but still reports log-probs at the requested temperature
    torch.testing.assert_close(ro.logprobs[0], torch.tensor(logps), atol=ATOL, rtol=0)


def test_greedy_is_deterministic(causal_lm):
    torch.manual_seed(0)
    first = generate(causal_lm, PROMPTS, eos_id=NEVER, max_new_tokens=8, greedy=True)
    torch.manual_seed(99)
    second = generate(causal_lm, PROMPTS, eos_id=NEVER, max_new_tokens=8, greedy=True)
    assert torch.equal(first.input_ids, second.input_ids)
    assert torch.equal(first.logprobs, second.logprobs)


# -------------------------------------------------------------------------------------------- sampling


def test_sampling_is_reproducible_with_a_seed(causal_lm):
    model = EosBiased(causal_lm, EOS, bias=4.5)
    runs = []
    for _ in range(2):
        torch.manual_seed(2024)
        runs.append(generate(model, PROMPTS, max_new_tokens=10, temperature=0.9, top_p=0.95, top_k=50))
    assert torch.equal(runs[0].input_ids, runs[1].input_ids)
    assert torch.equal(runs[0].response_mask, runs[1].response_mask)
    assert torch.equal(runs[0].logprobs, runs[1].logprobs)
    torch.manual_seed(2025)
    other = generate(model, PROMPTS, max_new_tokens=10, temperature=0.9, top_p=0.95, top_k=50)
    assert not torch.equal(runs[0].input_ids, other.input_ids)


def test_top_k_one_sampling_equals_greedy(causal_lm):
    greedy = generate(causal_lm, PROMPTS, eos_id=NEVER, max_new_tokens=8, greedy=True, temperature=0.8)
    torch.manual_seed(5)
    sampled = generate(causal_lm, PROMPTS, eos_id=NEVER, max_new_tokens=8, top_k=1, temperature=0.8)
    assert torch.equal(sampled.input_ids, greedy.input_ids)
    torch.testing.assert_close(sampled.logprobs, greedy.logprobs, atol=ATOL, rtol=0)


def test_sampled_tokens_stay_in_the_filtered_set(causal_lm):
    """With top_k=3 every sampled token is among the 3 most likely of the fresh forward pass."""
    torch.manual_seed(11)
    ro = generate(causal_lm, PROMPTS, eos_id=NEVER, max_new_tokens=5, top_k=3)
    with torch.no_grad():
        from alignkit.models.logprobs import position_ids_from_mask

        logits = causal_lm(input_ids=ro.input_ids, attention_mask=ro.attention_mask,
                           position_ids=position_ids_from_mask(ro.attention_mask)).logits
    predicting = logits[:, ro.prompt_width - 1 : -1]
    top3 = predicting.topk(3, dim=-1).indices
    assert (top3 == ro.responses[..., None]).any(-1).all()


# ------------------------------------------------------------------------------------------ filter_logits


def kept(logits: torch.Tensor) -> list[bool]:
    return torch.isfinite(logits).tolist()


def test_top_k_keeps_exactly_k():
    torch.manual_seed(0)
    logits = torch.randn(5, 50)
    for k in (1, 3, 10):
        out = filter_logits(logits, top_k=k)
        assert (torch.isfinite(out).sum(-1) == k).all()
        top = logits.topk(k, dim=-1).indices
        mask = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, top, True)
        assert torch.equal(out[mask], logits[mask])  # kept logits are unchanged
        assert (out[~mask] == float("-inf")).all()


def test_top_k_off_or_larger_than_vocab_is_identity():
    logits = torch.randn(2, 7)
    assert torch.equal(filter_logits(logits, top_k=0), logits)
    assert torch.equal(filter_logits(logits, top_k=7), logits)
    assert torch.equal(filter_logits(logits, top_k=100), logits)
    assert torch.equal(filter_logits(logits, top_p=1.0), logits)


def test_top_k_keeps_ties_at_the_boundary():
    out = filter_logits(torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0]), top_k=2)
    assert kept(out) == [False, True, True, True, False]


@pytest.mark.parametrize("top_p, expected", [
    (0.3, [True, False, False, False]),   # the top token alone already reaches p
    (0.5, [True, False, False, False]),
    (0.75, [True, True, False, False]),
    (0.8, [True, True, False, False]),    # 0.5 + 0.3 reaches 0.8 exactly
    (0.81, [True, True, True, False]),
    (0.95, [True, True, True, False]),
    (0.96, [True, True, True, True]),
])
def test_top_p_hand_example(top_p, expected):
    probs = [0.5, 0.3, 0.15, 0.05]
    logits = torch.tensor(probs).log()
    assert kept(filter_logits(logits, top_p=top_p)) == expected
    # the order of the vocabulary does not matter
    perm = torch.tensor([2, 0, 3, 1])
    assert kept(filter_logits(logits[perm], top_p=top_p)) == [expected[i] for i in perm.tolist()]
    # batched rows are filtered independently
    both = filter_logits(torch.stack([logits, logits[perm]]), top_p=top_p)
    assert kept(both[0]) == expected and kept(both[1]) == [expected[i] for i in perm.tolist()]


def test_top_p_keeps_logits_unchanged_and_matches_smallest_nucleus():
    torch.manual_seed(1)
    logits = torch.randn(8, 30) * 2
    for top_p in (0.2, 0.5, 0.9):
        out = filter_logits(logits, top_p=top_p)
        keep = torch.isfinite(out)
        assert torch.equal(out[keep], logits[keep])
        probs = torch.softmax(logits, dim=-1)
        for b in range(logits.shape[0]):
            order = probs[b].argsort(descending=True)
            mass = probs[b][order].cumsum(0)
            size = int((mass < top_p).sum()) + 1  # smallest prefix whose mass reaches p
            assert keep[b].sum() == size
            assert keep[b][order[:size]].all()


@pytest.mark.parametrize("top_p", [0.0, 1e-9, 0.01])
def test_top_p_always_keeps_the_most_likely_token(top_p):
    logits = torch.tensor([[0.1, 2.0, -1.0, 0.5], [5.0, 4.9, 4.8, 4.7]])
    out = filter_logits(logits, top_p=top_p)
    assert kept(out[0]) == [False, True, False, False]
    assert kept(out[1]) == [True, False, False, False]
    assert not torch.isnan(torch.softmax(out, dim=-1)).any()


def test_top_k_and_top_p_combine():
    # top-k first (3 tokens: probs renormalised to 0.5/0.3/0.2 after filtering), then top-p on what remains
    probs = torch.tensor([0.45, 0.27, 0.18, 0.1])
    out = filter_logits(probs.log(), top_k=3, top_p=0.85)
    assert kept(out) == [True, True, True, False]
    out = filter_logits(probs.log(), top_k=3, top_p=0.75)  # 0.75 of the renormalised mass, not 0.75 of 1
    assert kept(out) == [True, True, False, False]
    assert math.isclose(float(torch.softmax(out, -1)[0]), 0.45 / 0.72, rel_tol=1e-5)


# ------------------------------------------------------------------------------------------- Rollout


def test_full_response_mask_hand_built():
    ro = Rollout(
        input_ids=torch.tensor([[0, 7, 8, 9, 2, 0], [5, 6, 7, 9, 9, 9]]),
        attention_mask=torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]),
        prompt_width=3,
        response_mask=torch.tensor([[1, 1, 0], [1, 1, 1]]),
        logprobs=torch.zeros(2, 3),
        finished=torch.tensor([True, False]),
    )
    assert ro.full_response_mask().tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]]
    assert ro.responses.tolist() == [[9, 2, 0], [9, 9, 9]]
    assert ro.lengths.tolist() == [2, 3]
