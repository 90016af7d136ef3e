"""Models the hand-written fast paths do not know train through the plain path, with no code change: a tiny Qwen3
(packed rows under the block mask: no flat varlen, no read-out, no hand-written decode) and a tiny Gemma 2 (logit
soft-capping and sliding-window attention: its own forward, one sequence per row). `models.score` gives the
log-probs a direct forward gives, and SFT, a reward model and DPO learn."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit import DPOConfig, RewardConfig, SFTConfig, run_dpo, run_reward, run_sft
from alignkit.data.collate import collate_pairs, pack_pairs
from alignkit.models.load import load_causal_lm
from alignkit.models.logprobs import capabilities, score
from conftest import logps_by_hand, synthetic_pairs, write_jsonl


def _config(arch: str, vocab: int, tok):
    from transformers import Gemma2Config, Qwen3Config

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    if arch == "qwen3":
        return Qwen3Config(**common)
    # a sliding window shorter than the sequences, so that the window really masks, and soft-capped logits
    return Gemma2Config(**common, sliding_window=16, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                        query_pre_attn_scalar=16)


@pytest.fixture(scope="module", params=["qwen3", "gemma2"])
def unknown_model(request, tiny_model, tmp_path_factory):
    """A tiny randomly initialised model of a family no fast path covers, with the tiny model's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(request.param, len(tok), tok))
    out = tmp_path_factory.mktemp(request.param) / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return request.param, str(out)


ITEMS = [{"prompt": [5, 6, 7, 8], "chosen": [9, 10, 11] * 8, "rejected": [12, 13] * 5},
         {"prompt": [14, 15], "chosen": [16, 17, 18, 19], "rejected": [20] * 21}]


def test_the_plain_path_is_chosen_and_exact(unknown_model):
    arch, path = unknown_model
    model = load_causal_lm(path).eval()
    caps = capabilities(model)
    assert not caps.varlen and caps.readout is not None  # no hand-written path covers the family
    if arch == "qwen3":
        assert caps.packing is None and caps.split_head
    else:
        assert caps.packing == "sliding-window attention" and not caps.split_head  # soft-capped logits
    want = logps_by_hand(model, ITEMS)
    with torch.no_grad():
        batches = [collate_pairs(ITEMS, 0)] + ([pack_pairs(ITEMS, 0, pack_tokens=0, varlen=False)] if caps.packing is None else [])
        for batch in batches:
            got = score(model, batch).logp
            torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-4, rtol=1e-5)


def _curve(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_sft_rm_and_dpo_learn_through_the_plain_path(unknown_model, tmp_path):
    arch, path = unknown_model
    rows = synthetic_pairs(96, 3)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    demos = write_jsonl(tmp_path / "demos.jsonl", [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows])
    common = dict(model=path, data=pairs, batch_size=8, eval_fraction=0.25, progress=False, seed=0)
    sft = run_sft(SFTConfig(**{**common, "data": demos}, output_dir=str(tmp_path / "sft"), epochs=3,
                            learning_rate=3e-3))
    assert sft.eval["loss"] < 0.7 * sft.first_eval["loss"], (arch, sft.first_eval, sft.eval)
    rm = run_reward(RewardConfig(**common, output_dir=str(tmp_path / "rm"), epochs=3, learning_rate=1e-3))
    assert rm.first_eval["accuracy"] < 0.8 and rm.eval["accuracy"] >= 0.9, (arch, rm.first_eval, rm.eval)
    dpo = run_dpo(DPOConfig(**common, output_dir=str(tmp_path / "dpo"), epochs=2, learning_rate=1e-3, beta=0.1))
    # measured: accuracy 1.0 and margin 1.06 (Qwen3) / 1.20 (Gemma 2); untrained, the margin is 0
    assert dpo.eval["accuracy"] >= 0.9 and dpo.eval["margin"] > 0.5, (arch, dpo.first_eval, dpo.eval)
    assert _curve(tmp_path / "dpo")[0]["step"] == 0  # evaluated before the first step, then trained
