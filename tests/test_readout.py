"""The reward read-out (`models.readout.hidden_at`): the last decoder layer computed only at the positions read
gives the same scores, gradients and training curves as the full backbone (float32, 1e-5), is really taken for
the architectures it covers, and falls back to the full backbone for the others."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from alignkit.data.collate import collate_pairs, pack_pairs
from alignkit.models import readout
from alignkit.models.load import apply_lora, unwrap
from alignkit.models.logprobs import reward_scores
from alignkit.models.varlen import varlen_supported
from alignkit.train.reward import batch_scores, pair_step

PAD = 0
ITEMS = [
    {"prompt": [5, 17, 30, 44, 51], "chosen": [60, 71, 82], "rejected": [61, 62], "label": 1.0},
    {"prompt": [9, 13], "chosen": [100, 101, 102, 103, 104, 105, 106], "rejected": [7, 8, 9, 10], "label": 0.8},
    {"prompt": [21, 22, 23, 24, 25, 26, 27, 28], "chosen": [40], "rejected": [41, 42, 43, 44, 45, 46], "label": 0.6},
    {"prompt": [], "chosen": [70, 71, 72], "rejected": [73, 74], "label": 1.0, "margin": 0.5},
]
# every row 5 tokens: no padding at all (sdpa then gets no mask, only its causal flag)
SAME_LENGTH = [{"prompt": [5, 6, 7], "chosen": [8, 9], "rejected": [10, 11]},
               {"prompt": [12, 13], "chosen": [14, 15, 16], "rejected": [17, 18, 19]}]


def _left_padded(items):
    """`collate_pairs`' batch (one sequence per row) with each row's tokens moved to its right end: left padding."""
    batch = collate_pairs(items, PAD)
    width = batch["input_ids"].shape[1]
    shift = (width - batch["attention_mask"].sum(-1)).tolist()
    for k in ("input_ids", "attention_mask", "position_ids", "segment", "parent", "response_mask"):
        batch[k] = torch.stack([row.roll(s) for row, s in zip(batch[k], shift, strict=True)])
    for k in ("score_index", "last_index"):
        batch[k] = batch[k] + torch.tensor(shift)[batch[k] // width]
    return batch


LAYOUTS = {
    "right-padded": lambda: collate_pairs(ITEMS, PAD),
    "left-padded": lambda: _left_padded(ITEMS),
    "unpadded": lambda: collate_pairs(SAME_LENGTH, PAD),
    "packed-shared": lambda: pack_pairs(ITEMS, PAD, pack_tokens=1000, shared_prompt=True),
    "packed-separate": lambda: pack_pairs(ITEMS, PAD, pack_tokens=0, shared_prompt=False),
    "packed-rows": lambda: pack_pairs(ITEMS, PAD, pack_tokens=24, shared_prompt=True),  # several rows, reads per row
    # the same packed batches computed in their rows with the block mask instead of flat (models.varlen)
    "packed-shared-masked": lambda: pack_pairs(ITEMS, PAD, pack_tokens=1000, shared_prompt=True, varlen=False),
    "packed-rows-masked": lambda: pack_pairs(ITEMS, PAD, pack_tokens=24, shared_prompt=True, varlen=False),
}


def build(arch: str, impl: str = "sdpa", seed: int = 0, **overrides):
    """A tiny randomly initialised reward model (scalar head), eval mode, float32."""
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
        MistralConfig,
        MistralForSequenceClassification,
        Qwen2Config,
        Qwen2ForSequenceClassification,
        Qwen3Config,
        Qwen3ForSequenceClassification,
    )

    torch.manual_seed(seed)
    ids = dict(vocab_size=128, num_labels=1, pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
    # Llama-family: grouped-query attention (4 query heads, 2 key/value heads)
    llama = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=128, **ids)
    config = {
        "gpt2": lambda: GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0,
                                   attn_pdrop=0.0, **ids),
        "llama": lambda: LlamaConfig(**llama),
        "llama-bias": lambda: LlamaConfig(attention_bias=True, mlp_bias=True, head_dim=8, **llama),
        "mistral": lambda: MistralConfig(sliding_window=None, **llama),
        "qwen2": lambda: Qwen2Config(**llama),
        "qwen3": lambda: Qwen3Config(head_dim=16, **llama),
    }[arch]()
    for k, v in overrides.items():
        setattr(config, k, v)
    config._attn_implementation = impl
    cls = {"gpt2": GPT2ForSequenceClassification, "llama": LlamaForSequenceClassification,
           "llama-bias": LlamaForSequenceClassification, "mistral": MistralForSequenceClassification,
           "qwen2": Qwen2ForSequenceClassification, "qwen3": Qwen3ForSequenceClassification}[arch]
    model = cls(config).eval()
    assert model.config._attn_implementation == impl
    return model


def last_layer(model):
    base = unwrap(model)
    backbone = getattr(base, base.base_model_prefix)
    return (backbone.h if hasattr(backbone, "h") else backbone.layers)[-1]


@contextlib.contextmanager
def mlp_positions(model):
    """Records how many positions the last layer's MLP is run on, per call."""
    seen = []
    handle = last_layer(model).mlp.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[:-1].numel()))
    try:
        yield seen
    finally:
        handle.remove()


def both_paths(model, fn):
    """fn() by the read-out (checking that it ran the last MLP on the sequences' last tokens only) and by the
    full backbone (checking that it ran it everywhere)."""
    batch_reads = []
    with mlp_positions(model) as seen:
        fast = fn()
    batch_reads.append(seen)
    with readout.full_backbone(), mlp_positions(model) as seen:
        full = fn()
    batch_reads.append(seen)
    return fast, full, batch_reads


def n_sequences(batch) -> int:
    return batch["last_index"].shape[0] if "segment" in batch else batch["input_ids"].shape[0]


def n_computed(model, batch) -> int:
    """Positions a full forward computes: the real tokens of a packed batch run flat, else the whole batch."""
    flat = "segment" in batch and batch["varlen"] and varlen_supported(model)
    return int(batch["attention_mask"].sum()) if flat else batch["input_ids"].numel()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "llama-bias", "mistral", "qwen2"])
def test_scores_match_the_full_backbone(arch, impl, layout):
    model = build(arch, impl)
    assert readout.unsupported(model) is None
    batch = LAYOUTS[layout]()
    with torch.no_grad():
        fast, full, (fast_rows, full_rows) = both_paths(model, lambda: batch_scores(model, batch))
    assert fast_rows == [n_sequences(batch)]  # the fast path was taken: the last MLP saw only the positions read
    assert full_rows == [n_computed(model, batch)]
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)


def _grads(model, batch):
    """Bradley-Terry loss and gradients of a pairs batch (sequence i chosen, sequence B + i its rejected one)."""
    b = n_sequences(batch) // 2
    batch = {**batch, "pair_chosen": torch.arange(b), "pair_rejected": torch.arange(b, 2 * b)}
    model.zero_grad()
    loss, _ = pair_step(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_grads_close(got: dict, want: dict):
    """Equal to 1e-5 of the largest gradient entry (some gradients are 0 in exact arithmetic, e.g. of the final
    norm's bias under a pairwise loss: float noise there is not relative to them) and 1e-4 relative."""
    assert got.keys() == want.keys()
    scale = max(float(g.abs().max()) for g in want.values())
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5 * scale, rtol=1e-4, msg=name)


@pytest.mark.parametrize("layout", ["right-padded", "left-padded", "packed-shared", "packed-separate", "packed-rows"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bradley_terry_gradients_match_the_full_backbone(arch, impl, layout):
    model = build(arch, impl)
    batch = LAYOUTS[layout]()
    (loss_fast, g_fast), (loss_full, g_full), (fast_rows, _) = both_paths(model, lambda: _grads(model, batch))
    assert fast_rows == [n_sequences(batch)]
    torch.testing.assert_close(loss_fast, loss_full, atol=1e-6, rtol=1e-5)
    assert len(g_full) == len(list(model.parameters()))  # every parameter, the last layer's included
    assert_grads_close(g_fast, g_full)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lora_reward_model(arch):
    """peft wraps the projections the read-out calls: the adapters take part (their weights are made non-zero)."""
    model = apply_lora(build(arch), r=4, alpha=8, reward_head=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    assert readout.unsupported(model) is None
    for layout in ("right-padded", "packed-shared"):
        batch = LAYOUTS[layout]()
        (loss_fast, g_fast), (loss_full, g_full), (fast_rows, _) = both_paths(model, lambda: _grads(model, batch))  # noqa: B023
        assert fast_rows == [n_sequences(batch)]
        torch.testing.assert_close(loss_fast, loss_full, atol=1e-6, rtol=1e-5)
        assert any("lora" in n for n in g_full)
        assert_grads_close(g_fast, g_full)


def _sharded(model):
    """The model under a class name that `sharded()` takes for FSDP2's."""
    model.__class__ = type("FSDP" + type(model).__name__, (type(model),), {})
    return model


def _dropout_in_training(model):
    model.config.attention_dropout = 0.1
    for layer in unwrap(model).model.layers:
        layer.self_attn.attention_dropout = 0.1
    return model.train()


UNSUPPORTED = {
    "qwen3": (lambda: build("qwen3"), "no hand-written last layer"),
    "gpt2-upcast": (lambda: build("gpt2", "eager", reorder_and_upcast_attn=True), "upcast"),
    "mistral-window": (lambda: build("mistral", sliding_window=4), "sliding-window"),
    "llama-dropout": (lambda: _dropout_in_training(build("llama")), "dropout"),
    "sharded": (lambda: _sharded(build("gpt2")), "FSDP"),
}


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_unsupported_models_take_the_full_backbone(case):
    make, reason = UNSUPPORTED[case]
    model = make()
    assert reason in readout.unsupported(model)
    batch = LAYOUTS["right-padded"]()

    def scores():
        torch.manual_seed(0)  # the dropout case draws the same masks on both paths
        return batch_scores(model, batch)

    with torch.no_grad():
        fast, full, (fast_rows, full_rows) = both_paths(model, scores)
    assert fast_rows == full_rows == [batch["input_ids"].numel()]
    torch.testing.assert_close(fast, full, atol=0, rtol=0)


def test_attention_implementation_without_4d_mask_is_unsupported():
    model = build("llama")
    model.config._attn_implementation = "flash_attention_2"
    assert "flash_attention_2" in readout.unsupported(model)


def test_nothing_stays_hooked_after_an_error():
    model = build("llama")
    layer = last_layer(model)
    with pytest.raises(IndexError):  # a token id outside the vocabulary fails in the embedding, before the hook
        reward_scores(model, torch.tensor([[1, 500]]), torch.ones(1, 2, dtype=torch.long))
    assert not layer._forward_pre_hooks
    batch = LAYOUTS["right-padded"]()
    batch_scores(model, batch)
    assert not layer._forward_pre_hooks


def _curve(out) -> list[float]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [m["loss"] for m in lines if m["split"] == "train"]


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_reward_training_same_with_and_without_readout(arch, packing, tiny_model, tiny_gpt2, pair_files, tmp_path,
                                                       monkeypatch):
    """Four optimizer steps of `alignkit rm` (and its offset pass): the same loss curve and offset with the read-out
    and with the full backbone; then the RL reward source scores the same both ways."""
    from alignkit import RewardConfig, run_reward
    from alignkit.rollout.rewards import OFFSET_KEY, ModelReward

    calls = []
    real = readout._last_layer_at
    monkeypatch.setattr(readout, "_last_layer_at", lambda *a: calls.append(1) or real(*a))
    model = tiny_gpt2 if arch == "gpt2" else tiny_model
    curves, offsets = {}, {}
    for name in ("fast", "full"):
        out = tmp_path / name
        cfg = RewardConfig(model=model, data=pair_files[0], output_dir=str(out), max_steps=4, batch_size=8,
                           learning_rate=1e-3, eval_fraction=0.0, progress=False, packing=packing, offset_pairs=16)
        with readout.full_backbone() if name == "full" else contextlib.nullcontext():
            n_calls = len(calls)
            run_reward(cfg)
            assert (len(calls) > n_calls) == (name == "fast")  # 4 steps + the offset pass
        curves[name] = _curve(out)
        offsets[name] = json.loads((out / "config.json").read_text())[OFFSET_KEY]
    assert len(curves["full"]) == 4 and curves["full"][0] != curves["full"][-1]
    assert curves["fast"] == pytest.approx(curves["full"], abs=1e-5, rel=1e-5)
    assert offsets["fast"] == pytest.approx(offsets["full"], abs=1e-5)

    reward = ModelReward(str(tmp_path / "fast"), batch_size=3, packed=False)
    prompts = ["Review of Alpha:", "Review of Bravo:", "Review of Comet:", "Review of Delta:"]
    responses = [" great.", " awful boring dull.", " lovely moving charming superb.", ""]
    n_calls = len(calls)
    fast = reward(prompts, responses)
    assert len(calls) == n_calls + 2  # two batches, both by the read-out
    with readout.full_backbone():
        full = reward(prompts, responses)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)


def test_readout_leaves_language_model_paths_alone(tiny_gpt2):
    """Log-prob and value paths keep the full backbone (they read every position)."""
    from transformers import AutoModelForCausalLM

    from alignkit.models.logprobs import response_values, sequence_logprobs

    lm = AutoModelForCausalLM.from_pretrained(tiny_gpt2, dtype=torch.float32).eval()
    batch = LAYOUTS["right-padded"]()
    with torch.no_grad(), mlp_positions(lm) as seen:
        sequence_logprobs(lm, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    assert seen == [batch["input_ids"].numel()]
    model = build("gpt2")
    with torch.no_grad(), mlp_positions(model) as seen:
        response_values(model, batch["input_ids"], batch["attention_mask"], 3)
    assert seen == [batch["input_ids"].numel()]


def test_bf16_autocast():
    """Under bf16 autocast the read-out agrees with the full backbone to bf16 rounding."""
    model = build("llama")
    batch = LAYOUTS["packed-shared"]()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast, full, (fast_rows, _) = both_paths(model, lambda: batch_scores(model, batch))
    assert fast_rows == [n_sequences(batch)]
    torch.testing.assert_close(fast, full, atol=2e-2, rtol=2e-2)
