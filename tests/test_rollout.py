"""HFBackend rollouts: log-probs against fresh forward passes, per-row EOS stopping, left padding, greedy
decoding, seeding, and the top-k / top-p filter; dropping finished rows, length-bucketed `generate_many`
and token-budget scoring against their plain counterparts."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.models.compat import cache_keyword
from alignkit.models.logprobs import response_logprobs
from alignkit.rollout.engine import (
    HFBackend,
    ReservedLayer,
    Rollout,
    SamplingParams,
    budget_chunks,
    decode_responses,
    filter_logits,
    generate_many,
    reserved_cache,
    sample_categorical,
    score_in_chunks,
)

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
        self.config = inner.config  # so the engine can reserve the inner model's KV cache
        self.token = token
        self.bias = bias

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        shift = torch.zeros(out.logits.shape[-1], dtype=out.logits.dtype, device=out.logits.device)
        shift[self.token] = self.bias
        out.logits = out.logits + shift
        return out


def generate(model, prompts, *, eos_id=EOS, backend=None, generator=None, **params) -> Rollout:
    return (backend or HFBackend()).generate(model, prompts, SamplingParams(**params), pad_id=PAD, eos_id=eos_id,
                                             generator=generator)


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


# ------------------------------------------------------------------------------- dropping finished rows


class BatchSizes(torch.nn.Module):
    """Wraps a causal LM and records the batch size of every forward call (to see the live batch shrink)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = getattr(inner, "config", None)
        self.sizes: list[int] = []

    def forward(self, **kwargs):
        self.sizes.append(kwargs["input_ids"].shape[0])
        return self.inner(**kwargs)


def assert_same_rollout(a: Rollout, b: Rollout, atol: float = 1e-5) -> None:
    assert a.prompt_width == b.prompt_width
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.attention_mask, b.attention_mask)
    assert torch.equal(a.response_mask, b.response_mask)
    assert torch.equal(a.finished, b.finished)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=atol, rtol=0)


MANY = PROMPTS + [p[::-1] for p in PROMPTS] + [[7, 8, 9, 10], [55, 56, 57, 58, 59, 60, 61]]


class EosRamp(torch.nn.Module):
    """Wraps a causal LM and adds `slope * position` to the EOS logit: greedy rows then stop once the ramp
    overtakes their own best token, at steps that depend on each row's prompt and response (rows stop one
    after another). Position ids are an input, so the engine's cached steps and a fresh forward agree."""

    def __init__(self, inner, slope: float):
        super().__init__()
        self.inner = inner
        self.slope = slope

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        ramp = torch.zeros_like(out.logits)
        positions = kwargs["position_ids"][:, -out.logits.shape[1]:]  # the positions that have logits
        ramp[..., EOS] = self.slope * positions.to(out.logits.dtype)
        out.logits = out.logits + ramp
        return out


def staggered(causal_lm, prompts, max_new):
    """The EosRamp model with the smallest slope (searched) whose greedy rows finish at three or more
    different steps, at least half of them but not all. Returns it and its rollout without dropping."""
    for slope in torch.arange(0.01, 0.3, 0.01).tolist():
        model = EosRamp(causal_lm, slope)
        ro = generate(model, prompts, max_new_tokens=max_new, greedy=True, temperature=0.7,
                      backend=HFBackend(drop_finished=False))
        ends = set(ro.lengths[ro.finished].tolist())
        if len(ends) >= 3 and len(prompts) // 2 <= int(ro.finished.sum()) < len(prompts):
            return model, ro
    raise AssertionError("no slope makes the greedy rows stop at different steps")


@pytest.mark.parametrize("fraction", [0.0, 0.25])
def test_dropping_finished_rows_keeps_greedy_rollout(causal_lm, fraction):
    """Greedy with finished rows dropped from the live batch (KV cache included) equals greedy without; with
    a fraction > 0 finished rows wait in the batch until enough of them can go together."""
    max_new = 16
    model, plain = staggered(causal_lm, MANY, max_new)
    kept = BatchSizes(model)
    again = generate(kept, MANY, max_new_tokens=max_new, greedy=True, temperature=0.7,
                     backend=HFBackend(drop_finished=False))
    assert set(kept.sizes) == {len(MANY)}  # without dropping the batch never shrinks
    assert_same_rollout(again, plain, atol=0)
    dropped = BatchSizes(model)
    fast = generate(dropped, MANY, max_new_tokens=max_new, greedy=True, temperature=0.7,
                    backend=HFBackend(drop_finished=True, drop_fraction=fraction))
    # the live batch really shrank, in steps no smaller than the fraction asks for
    steps = [(a, b) for a, b in zip(dropped.sizes, dropped.sizes[1:], strict=False) if a != b]
    assert steps and all(a > b and a - b >= fraction * a for a, b in steps)
    check_layout(fast, MANY, EOS, max_new)
    assert_same_rollout(fast, plain)


@pytest.mark.parametrize("fraction", [0.0, 0.25])
def test_sampled_logprobs_with_dropping_match_recomputation(causal_lm, fraction):
    """Sampling (fixed generator) with rows dropped as they finish: the sampler's log-probs are those of the
    training-side recomputation over the returned rollout, so every row kept its own KV cache rows."""
    model = BatchSizes(EosBiased(causal_lm, EOS, bias=4.0))
    prompts = PROMPTS * 2
    gen = torch.Generator().manual_seed(17)
    ro = generate(model, prompts, max_new_tokens=16, temperature=0.8, top_p=0.95, generator=gen,
                  backend=HFBackend(drop_fraction=fraction))
    check_layout(ro, prompts, EOS, 16)
    assert len(set(ro.lengths.tolist())) > 1 and bool(ro.finished.any())
    assert min(model.sizes) < len(prompts)
    with torch.no_grad():
        recomputed = response_logprobs(model, ro.input_ids, ro.attention_mask, ro.prompt_width,
                                       ro.response_mask, temperature=0.8)
    torch.testing.assert_close(ro.logprobs, recomputed, atol=ATOL, rtol=0)
    again = generate(model, prompts, max_new_tokens=16, temperature=0.8, top_p=0.95,
                     generator=torch.Generator().manual_seed(17), backend=HFBackend(drop_fraction=fraction))
    assert torch.equal(again.input_ids, ro.input_ids)  # reproducible with the same generator


def test_dropping_draws_the_same_samples_until_the_first_drop(causal_lm):
    """With the same generator, sampling with and without dropping takes the same draws (and tokens) up to the
    step at which the first row finished; only later, on a smaller live batch, do the random streams part."""
    model = EosBiased(causal_lm, EOS, bias=4.0)
    runs = [generate(model, PROMPTS, max_new_tokens=12, temperature=0.9, generator=torch.Generator().manual_seed(5),
                     backend=HFBackend(drop_finished=d, drop_fraction=0.0)) for d in (False, True)]
    for ro in runs:
        check_layout(ro, PROMPTS, EOS, 12)
    first_end = int(runs[0].lengths[runs[0].finished].min())  # no row was dropped before this step
    assert first_end < int(runs[0].lengths.max())
    assert torch.equal(runs[0].responses[:, :first_end], runs[1].responses[:, :first_end])
    torch.testing.assert_close(runs[0].logprobs[:, :first_end], runs[1].logprobs[:, :first_end], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------ reserved KV cache


def test_reserved_layer_equals_concatenation_and_grows():
    """Appending to a ReservedLayer (past its reservation too) gives the keys/values torch.cat would; selecting
    rows keeps exactly those rows."""
    torch.manual_seed(0)
    layer = ReservedLayer(capacity=5)
    chunks = [(torch.randn(3, 2, n, 4), torch.randn(3, 2, n, 4)) for n in (3, 1, 1, 4, 1)]  # 10 > 5 positions
    for i, (k, v) in enumerate(chunks, start=1):
        keys, values = layer.update(k, v)
        assert torch.equal(keys, torch.cat([c[0] for c in chunks[:i]], dim=-2))
        assert torch.equal(values, torch.cat([c[1] for c in chunks[:i]], dim=-2))
    assert layer.get_seq_length() == 10 and layer._k.shape[-2] >= 10
    layer.batch_select_indices(torch.tensor([2, 0]))
    assert torch.equal(layer.keys, torch.cat([c[0] for c in chunks], dim=-2)[[2, 0]])
    keys, _ = layer.update(torch.ones(2, 2, 1, 4), torch.ones(2, 2, 1, 4))
    assert keys.shape == (2, 2, 11, 4) and torch.equal(keys[:, :, -1], torch.ones(2, 2, 4))


def test_reserved_cache_replaces_full_attention_layers(causal_lm):
    cache = reserved_cache(causal_lm, 40)
    assert cache is not None and len(cache.layers) == causal_lm.config.num_hidden_layers
    assert all(isinstance(layer, ReservedLayer) and layer.capacity == 40 for layer in cache.layers)
    assert reserved_cache(torch.nn.Linear(2, 2), 40) is None  # no config: the model makes its own cache


@pytest.mark.parametrize("drop", [False, True])
def test_reserved_cache_rollout_equals_dynamic_cache(causal_lm, drop):
    """Sampling with the reserved KV cache and with transformers' own DynamicCache (same generator) draws the
    same tokens with the same log-probs, with and without dropping finished rows; the engine really used a
    ReservedLayer cache."""
    seen = []

    class Spy(EosBiased):
        def forward(self, **kwargs):
            key = cache_keyword(self)  # the keyword the engine passes the cache under
            seen.append(type(kwargs.get(key)).__name__ if key in kwargs else None)
            seen.append(type(getattr(kwargs.get(key), "layers", [None])[0]).__name__)
            return super().forward(**kwargs)

    model = Spy(causal_lm, EOS, bias=4.0)
    runs = [generate(model, PROMPTS * 2, max_new_tokens=14, temperature=0.9, generator=torch.Generator().manual_seed(3),
                     backend=HFBackend(drop_finished=drop, drop_fraction=0.0, reserve_cache=r)) for r in (True, False)]
    assert "ReservedLayer" in seen[:2]  # the prompt pass of the first run got the reserved cache
    assert len(set(runs[0].lengths.tolist())) > 1 and bool(runs[0].finished.any())
    assert_same_rollout(runs[0], runs[1], atol=1e-6)


def test_rollout_entropy_matches_fresh_forward_pass(causal_lm):
    """The per-token entropy the sampler records is that of softmax(logits / T) from a full forward pass over
    the rollout (what the trainer logged before), 0 past each row's end."""
    model = EosBiased(causal_lm, EOS, bias=4.5)
    ro = generate(model, PROMPTS, max_new_tokens=12, temperature=0.7, generator=torch.Generator().manual_seed(2))
    assert ro.entropy is not None and bool(ro.finished.any())
    with torch.no_grad():
        _, expected = response_logprobs(model, ro.input_ids, ro.attention_mask, ro.prompt_width, ro.response_mask,
                                        temperature=0.7, entropy=True)
    torch.testing.assert_close(ro.entropy, expected, atol=ATOL, rtol=0)
    assert float(ro.entropy[ro.response_mask.bool()].min()) > 0.1  # a real entropy, not zeros


# ---------------------------------------------------------------------------------------- generate_many


class RecordingBackend(HFBackend):
    """An HFBackend that records the prompts and generator of every batch it is asked for."""

    def __init__(self):
        super().__init__()
        self.batches: list[list[list[int]]] = []
        self.generators: list = []

    def generate(self, model, prompts, params, **kw):
        self.batches.append(prompts)
        self.generators.append(kw.get("generator"))
        return super().generate(model, prompts, params, **kw)


def left_padding(batches: list[list[list[int]]]) -> int:
    return sum(max(map(len, b)) * len(b) - sum(map(len, b)) for b in batches)


@pytest.mark.parametrize("bucket", [True, False])
def test_generate_many_keeps_order_and_equals_per_prompt_greedy(causal_lm, bucket):
    """Bucketed (or not) batches of prompts: row i of the result answers prompts[i], and greedy rows equal
    each prompt decoded alone."""
    max_new = 10
    prompts = PROMPTS + [[7, 8, 9, 10], [55, 56]]
    free = generate(causal_lm, prompts, eos_id=NEVER, max_new_tokens=max_new, greedy=True)
    eos = pick_eos(free.responses)
    backend = RecordingBackend()
    gens = {b: torch.Generator().manual_seed(b) for b in range(4)}
    ro = generate_many(backend, causal_lm, prompts, SamplingParams(max_new_tokens=max_new, greedy=True),
                       pad_id=PAD, eos_id=eos, batch_size=3, bucket=bucket, generator_for=gens.get)
    check_layout(ro, prompts, eos, max_new)
    assert [len(b) for b in backend.batches] == [3, 3, 2]
    assert backend.generators == [gens[0], gens[1], gens[2]]
    if bucket:  # batches hold prompts of neighbouring lengths: less left padding than in the given order
        lengths = [sorted(map(len, b)) for b in backend.batches]
        assert all(a[-1] <= b[0] for a, b in zip(lengths, lengths[1:], strict=False))
        assert left_padding(backend.batches) < left_padding([prompts[i : i + 3] for i in range(0, len(prompts), 3)])
    else:
        assert backend.batches == [prompts[i : i + 3] for i in range(0, len(prompts), 3)]
    for i, prompt in enumerate(prompts):
        alone = generate(causal_lm, [prompt], eos_id=eos, max_new_tokens=max_new, greedy=True)
        n = int(alone.lengths[0])
        assert int(ro.lengths[i]) == n and bool(ro.finished[i]) == bool(alone.finished[0])
        assert ro.responses[i, :n].tolist() == alone.responses[0, :n].tolist()
        torch.testing.assert_close(ro.logprobs[i, :n], alone.logprobs[0, :n], atol=1e-5, rtol=0)
    # the merged rollout is a valid training batch: its log-probs are those of a recomputation
    with torch.no_grad():
        recomputed = response_logprobs(causal_lm, ro.input_ids, ro.attention_mask, ro.prompt_width,
                                       ro.response_mask)
    torch.testing.assert_close(ro.logprobs, recomputed, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------- token-budget scoring


def test_budget_chunks_cover_rows_within_budget():
    prompt = torch.tensor([5, 2, 8, 3, 6, 1, 4])
    response = torch.tensor([1, 9, 2, 7, 3, 3, 5])
    for budget in (1, 12, 25, 60, 1000):
        chunks = budget_chunks(prompt, response, budget)
        assert sorted(torch.cat(chunks).tolist()) == list(range(7))
        for c in chunks:
            assert len(c) == 1 or len(c) * int(prompt[c].max() + response[c].max()) <= budget
    assert len(budget_chunks(prompt, response, 1000)) == 1
    assert len(budget_chunks(prompt, response, 1)) == 7


@pytest.mark.parametrize("budget", [10, 40, 100_000])
def test_score_in_chunks_equals_one_forward(causal_lm, budget):
    """Policy log-probs with entropy (a tuple) and without, chunked by a token budget and cut to each chunk's
    width, equal one forward pass over the whole rollout."""
    model = EosBiased(causal_lm, EOS, bias=4.0)
    prompts = PROMPTS * 2
    ro = generate(model, prompts, max_new_tokens=12, generator=torch.Generator().manual_seed(3))
    assert len(set(ro.lengths.tolist())) > 1
    args = (ro.input_ids, ro.attention_mask, ro.prompt_width, ro.response_mask)
    with torch.no_grad():
        logp, ent = response_logprobs(model, *args, temperature=0.9, entropy=True)
        calls = []

        def fn(*a):
            calls.append(a[0].shape)
            return response_logprobs(model, *a, temperature=0.9, entropy=True)

        c_logp, c_ent = score_in_chunks(fn, ro, max_tokens=budget)
        only = score_in_chunks(lambda *a: response_logprobs(model, *a, temperature=0.9), ro, max_tokens=budget)
    if budget < 100:
        assert len(calls) > 1 and max(s[1] for s in calls) <= ro.input_ids.shape[1]
        assert min(s[1] for s in calls) < ro.input_ids.shape[1]  # some chunk was cut narrower
    else:
        assert calls == [ro.input_ids.shape] or len(calls) == 1
    torch.testing.assert_close(c_logp, logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(c_ent, ent, atol=1e-5, rtol=0)
    torch.testing.assert_close(only, logp, atol=1e-5, rtol=0)


def test_sampler_scores_in_chunks_like_one_forward(tiny_model, tmp_path):
    """online.Sampler with a tiny scoring budget (many chunks) gives the policy log-probs, entropies,
    reference log-probs and metrics of one with a budget that holds the whole batch."""
    from alignkit import RLOOConfig
    from alignkit.models.load import load_causal_lm, load_tokenizer
    from alignkit.train.online import Sampler, make_reference

    (tmp_path / "reward.py").write_text("def score(prompts, responses):\n    return [len(r) / 10 for r in responses]\n")
    cfg = RLOOConfig(model=tiny_model, prompts=str(tmp_path / "p.jsonl"), output_dir=str(tmp_path / "out"),
                     reward=f"{tmp_path / 'reward.py'}:score",
                     max_new_tokens=12, temperature=0.9, missing_eos_penalty=-1.0)
    tok = load_tokenizer(tiny_model)
    policy = EosBiased(load_causal_lm(tiny_model), tok.eos_token_id, bias=4.0)  # rows of different lengths
    torch.manual_seed(0)
    with torch.no_grad():  # a reference that differs from the policy
        policy.inner.lm_head.weight.add_(0.05 * torch.randn_like(policy.inner.lm_head.weight))
    reference = make_reference(cfg, policy)
    policy.inner.lm_head.weight.data.mul_(1.1)
    prompts = ["Review of Alpha:", "A long prompt about a film: Review of Bravo and Comet and Delta:", "Echo"] * 3
    ids = [tok(p)["input_ids"] for p in prompts]
    runs = []
    for budget in (10**9, 24):
        sampler = Sampler(cfg.model_copy(update={"score_tokens": budget}), tok, reference)
        sampler.backend = HFBackend()
        sampler.backend.generate = without_entropy(sampler.backend.generate)  # so the policy is rescored too
        runs.append(sampler.sample(policy, ids, prompts, torch.Generator().manual_seed(4)))
    own = Sampler(cfg, tok, reference).sample(policy, ids, prompts, torch.Generator().manual_seed(4))
    whole, chunked = runs
    assert len(set(whole.rollout.lengths.tolist())) > 1
    assert torch.equal(whole.rollout.input_ids, chunked.rollout.input_ids)
    for name in ("logp", "ref_logp", "entropy"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name), atol=1e-5, rtol=0)
    assert (whole.logp - whole.ref_logp).abs().max() > 1e-3  # the reference path is really another model
    torch.testing.assert_close(chunked.logp, whole.rollout.logprobs, atol=ATOL, rtol=0)
    for key in ("reward", "kl", "kl_k3", "entropy", "response_length"):
        assert chunked.metrics[key] == pytest.approx(whole.metrics[key], abs=1e-5)
    # the default sampler takes the policy's log-probs and entropies from the rollout: the same numbers
    assert torch.equal(own.rollout.input_ids, whole.rollout.input_ids)
    assert own.logp is own.rollout.logprobs and own.entropy is own.rollout.entropy
    for name in ("logp", "ref_logp", "entropy"):
        torch.testing.assert_close(getattr(own, name), getattr(whole, name), atol=ATOL, rtol=0)
    for key in ("reward", "kl", "kl_k3", "entropy", "response_length"):
        assert own.metrics[key] == pytest.approx(whole.metrics[key], abs=1e-4)


def without_entropy(generate):
    """A backend's generate whose rollouts carry no entropy (like a backend that cannot give one)."""
    def wrapped(*args, **kwargs):
        ro = generate(*args, **kwargs)
        ro.entropy = None
        return ro
    return wrapped


def test_sample_categorical_draws_each_entry_at_its_probability():
    """200,000 draws of three rows: frequencies within 4 standard errors of the probabilities (a biased or
    off-by-one inverse CDF misses by far more), zero-probability entries never drawn, unnormalised rows fine."""
    probs = torch.tensor([[0.1, 0.0, 0.2, 0.3, 0.4, 0.0],
                          [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                          [2.0, 0.0, 1.0, 0.0, 0.0, 1.0]])  # sums to 4: drawn as 0.5 / 0.25 / 0.25
    g = torch.Generator().manual_seed(7)
    assert sample_categorical(probs, g).shape == (3,)
    n, counts = 200_000, torch.zeros_like(probs)
    for _ in range(n // 5000):
        d = sample_categorical(probs.repeat_interleave(5000, 0), g).view(3, 5000)
        counts += torch.nn.functional.one_hot(d, 6).sum(1).float()
    freq, want = counts / n, probs / probs.sum(-1, keepdim=True)
    assert (freq[want == 0] == 0).all()
    se = (want * (1 - want) / n).sqrt()
    assert ((freq - want).abs() <= 4 * se + 1e-9).all(), (freq, want)


def test_decode_responses_cuts_at_eos_and_padding(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    words = [tok(text, add_special_tokens=False)["input_ids"] for text in (" good film", " bad plot")]
    eos = tok.eos_token_id
    width = max(map(len, words)) + 2
    rows, masks = [], []
    for i, ids in enumerate(words):  # row 0 ends with EOS, row 1 runs to the cap; padding (and junk) after
        resp = ids + [eos] if i == 0 else ids
        rows.append(resp + [words[1][0]] * (width - len(resp)))
        masks.append([1] * len(resp) + [0] * (width - len(resp)))
    ro = Rollout(input_ids=torch.tensor([[5] + r for r in rows]), attention_mask=torch.tensor([[1] + m for m in masks]),
                 prompt_width=1, response_mask=torch.tensor(masks), logprobs=torch.zeros(2, width),
                 finished=torch.tensor([True, False]))
    assert decode_responses(tok, ro) == [tok.decode(words[0]), tok.decode(words[1])]

