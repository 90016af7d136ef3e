"""Typed run configurations. Loadable from YAML, overridable from the command line, saved with every run.

Every field's description is the help text of its CLI flag (`--field-name`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alignkit.errors import ConfigError, not_unicode
from alignkit.judges.config import JudgeSettings

# what --mixed-precision auto chooses (`models.load.resolve_precision`), for every option's help
AUTO_PRECISION = ("auto: bf16 where the device computes it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or "
                  "AMX), else no")


def comma_choices(value: str, choices: tuple[str, ...], what: str) -> str:
    """A comma-separated setting checked against its choices; returned normalised ("a,b", blanks dropped)."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ValueError(f"give at least one {what}: {', '.join(choices)}")
    unknown = [v for v in items if v not in choices]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(repr(v) for v in unknown)}; choose from {', '.join(choices)}")
    return ",".join(dict.fromkeys(items))


class RunConfig(BaseModel):
    """Settings shared by every trainer (offline and online)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    inputs: ClassVar[str]  # what the run reads (train.inputs): sft, pairs, pairs-or-rankings, kto or prompts

    model: str = Field(description="policy to start from: a folder, a hub id, or a built-in name (smollm2-135m-instruct)")
    output_dir: str = Field(description="folder for the trained model, checkpoints, metrics.jsonl and config.yaml")
    skip_invalid: bool = Field(False, description="skip invalid records (counted and reported) instead of stopping at the first")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps to run (overrides --epochs)")
    epochs: float = Field(1.0, gt=0, description="passes over the training data")
    batch_size: int = Field(8, gt=0, description="examples (pairs for preference methods) per micro-batch")
    eval_batch_size: int | None = Field(None, gt=0, description="micro-batch for evaluation (default: --batch-size) and for the "
                                      "no-gradient reference and reward-offset passes (default: 4 x --batch-size)")
    gradient_accumulation_steps: int = Field(1, gt=0, description="micro-batches per optimizer step")
    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="share of steps with linear warm-up")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="schedule after warm-up")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping norm (0 = off)")
    skip_nonfinite: bool = Field(False, description="skip a step whose loss or gradient is NaN/inf (counted in "
                                 "metrics) instead of stopping the run")
    max_length: int = Field(512, gt=1, description="longest prompt+response in tokens; longer responses are cut (counted)")
    max_prompt_length: int = Field(256, gt=0, description="longest prompt in tokens; longer prompts keep their end (counted)")
    chat_template: bool = Field(False, description="wrap plain-string prompts as a user message and apply the chat template")
    eval_every: int = Field(0, ge=0, description="evaluate every N steps (0 = only at the end)")
    save_every: int = Field(0, ge=0, description="write a checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="how many recent checkpoints to keep")
    resume: bool = Field(False, description="continue from the newest intact checkpoint in --output-dir (a damaged "
                         "newer one is skipped; a changed run length rebuilds the learning-rate schedule)")
    seed: int = Field(42, description="random seed (data order, initialisation)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="dtype to load model weights in")
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = Field(
        "no", description=f"autocast precision (accelerate); {AUTO_PRECISION}")
    lora: bool = Field(False, description="train a LoRA adapter instead of all weights (saved merged)")
    lora_r: int = Field(16, gt=0, description="LoRA rank")
    lora_alpha: int = Field(32, gt=0, description="LoRA alpha")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    lora_target: str = Field("all-linear", description="LoRA target modules: all-linear or a comma list (q_proj,v_proj)")
    train_layers: int = Field(0, ge=0, description="train only the top N transformer blocks and what lies above "
                              "them (final norm, a score or value head); the embeddings and lower blocks stay frozen, "
                              "so each step's backward pass is shorter (0 = train every weight)")
    report_to: str = Field("none", description="also log the metrics and the config to experiment trackers: a comma "
                           "list of tensorboard (output_dir/tensorboard), wandb, mlflow; or none")
    progress: bool = Field(True, description="show a progress bar")

    @field_validator("output_dir")
    @classmethod
    def _output_dir(cls, value: str) -> str:
        """Refuse at once an output folder that cannot be created (a file or a broken symbolic link in its place or
        above it), rather than failing after data loading and model setup."""
        path = Path(value).expanduser()
        for p in (path, *path.parents):
            if p.is_symlink() and not p.exists():  # mkdir would fail on it, resolve() loop on it
                what = "is" if p == path else f"is inside '{p}', which is"
                raise ValueError(f"'{value}' {what} a symbolic link that leads nowhere (its target is missing, or "
                                 "the links form a loop)")
            if p.exists():
                if not p.is_dir():
                    what = "is an existing file" if p == path else f"is inside '{p}', which is a file"
                    raise ValueError(f"'{value}' {what}, not a folder")
                break
        return value

    @field_validator("report_to")
    @classmethod
    def _report_to(cls, value: str) -> str:
        """Known trackers whose packages are installed (checked without importing them)."""
        from alignkit.train.trackers import TRACKERS, missing

        value = comma_choices(value, ("none", *TRACKERS), "tracker")
        names = value.split(",")
        if "none" in names and len(names) > 1:
            raise ValueError(f"'none' cannot be combined with trackers: {value}")
        for name in names:
            if name != "none" and (why := missing(name)):
                raise ValueError(why)
        return value

    @model_validator(mode="after")
    def _train_layers(self):
        if self.train_layers and self.lora:
            raise ValueError("train_layers and lora both choose what is trained: give one of them")
        return self

    @model_validator(mode="after")
    def _lengths(self):
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be smaller than max_length ({self.max_length})")
        return self


class TrainConfig(RunConfig):
    """Settings shared by the offline trainers (a data file of demonstrations or preferences)."""

    data: str = Field(description="training data: .jsonl/.jsonl.gz/.json/.parquet file or a hub dataset id (org/name[:split])")
    eval_data: str | None = Field(None, description="held-out data; default: hold out --eval-fraction of --data")
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of --data held out for evaluation when --eval-data is not given")
    data_format: str = Field("auto", description="record format: auto, or (preference data) pairs, hh, alpaca_eval, votes, rankings")
    packing: bool = Field(True, description="pack sequences into rows without padding (block-diagonal attention); "
                          "off, or unsupported by the model, pads each batch to its longest sequence")
    pack_tokens: int = Field(0, ge=0, description="token budget of a packed row (0 = the batch's longest sequence: "
                             "least attention work on CPU; larger rows suit GPUs)")
    shared_prompt: bool = Field(True, description="with packing, lay a pair's (or ranking's) prompt out once for all "
                                "its responses")
    varlen: bool = Field(True, description="with packing, compute the real tokens in one flat row with attention per "
                         "sequence (GPT-2 and Llama-family models: no padding, no masked-out attention); off: packed "
                         "rows with a block-diagonal mask")


class SFTConfig(TrainConfig):
    """Supervised fine-tuning on demonstrations (prompt/completion or chat messages)."""

    inputs: ClassVar[str] = "sft"


class RewardConfig(TrainConfig):
    """Reward model from pairwise (hard or soft labels, optional margins) or ranked preferences."""

    inputs: ClassVar[str] = "pairs-or-rankings"

    learning_rate: float = Field(1e-5, gt=0, description="peak learning rate (AdamW)")
    normalize: bool = Field(True, description="after training, store an offset so training responses score mean 0")
    offset_pairs: int = Field(128, ge=1, description="training pairs (or rankings), evenly spaced through the data, "
                                                     "whose responses set the offset")


PreferenceLoss = Literal["dpo", "cdpo", "ipo", "hinge", "gdpo", "gipo", "simpo", "orpo"]
REFERENCE_FREE = ("simpo", "orpo")  # losses that need no reference model


class ReferenceConfig(TrainConfig):
    """Offline methods measured against a reference policy (DPO's family, KTO)."""

    reference: Literal["precomputed", "copy", "lora-disabled"] = Field(
        "precomputed", description="reference log-probs: precomputed once (cached), a frozen copy, or the base with LoRA disabled")
    reference_model: str | None = Field(None, description="a different reference model (default: the starting policy)")

    @model_validator(mode="after")
    def _reference_source(self):
        if self.reference == "lora-disabled" and not self.lora:
            raise ValueError("reference 'lora-disabled' needs --lora")
        if self.reference == "lora-disabled" and self.reference_model:
            raise ValueError("reference 'lora-disabled' uses the base model; drop --reference-model")
        return self


class DPOConfig(ReferenceConfig):
    """Reward-free preference optimisation: DPO and its family."""

    inputs: ClassVar[str] = "pairs"

    learning_rate: float = Field(5e-6, gt=0, description="peak learning rate (AdamW)")
    loss: PreferenceLoss = Field("dpo", description="dpo, cdpo, ipo, hinge, gdpo (soft-label geometric DPO, Furuta "
                                 "et al. 2024), gipo; or, with no reference model, simpo (Meng et al. 2024) or orpo "
                                 "(Hong et al. 2024)")
    beta: float = Field(0.1, gt=0, description="strength of the KL constraint to the reference; simpo: the scale of "
                        "its length-normalised reward (default there: 2.0)")
    simpo_gamma: float = Field(1.0, ge=0, description="simpo: target reward margin γ")
    orpo_weight: float = Field(0.1, gt=0, description="orpo: weight λ of the odds-ratio term beside the SFT loss")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cdpo: fixed label-noise rate ε (0 = take ε = 1 − p from soft labels)")
    ipo_average: bool = Field(False, description="ipo/gipo: use per-token-averaged log-probs instead of sums")

    @model_validator(mode="after")
    def _reference(self):
        if self.loss == "simpo" and "beta" not in self.model_fields_set:
            self.beta = 2.0
        if self.loss in REFERENCE_FREE and self.reference_model:
            raise ValueError(f"loss '{self.loss}' uses no reference model; drop --reference-model")
        return self


class KTOConfig(ReferenceConfig):
    """KTO: unpaired desirable and undesirable responses, a KL reference point (docs/algorithms.md, KTO)."""

    inputs: ClassVar[str] = "kto"

    data_format: str = Field("auto", description="record format: auto, kto (prompt, completion, label true/false), "
                             "or a preference format (pairs, hh, alpaca_eval, votes, rankings) split into unpaired "
                             "desirable and undesirable responses")
    learning_rate: float = Field(5e-6, gt=0, description="peak learning rate (AdamW)")
    beta: float = Field(0.1, gt=0, description="strength of the KL constraint to the reference")
    desirable_weight: float | None = Field(None, gt=0, description="λ_D, the weight of desirable examples (default: 1, "
                                           "or raised or lowered so that λ_D·n_D / λ_U·n_U = 1 when the counts are "
                                           "outside the KTO paper's [1, 4/3])")
    undesirable_weight: float | None = Field(None, gt=0, description="λ_U, the weight of undesirable examples "
                                             "(default: 1, or set as for --desirable-weight)")


class CoHConfig(TrainConfig):
    """Chain of Hindsight: preference pairs as text with feedback phrases, trained by cross-entropy."""

    inputs: ClassVar[str] = "pairs"

    learning_rate: float = Field(1e-5, gt=0, description="peak learning rate (AdamW)")
    positive: str = Field(" A helpful answer:", description="feedback phrase before a preferred response")
    negative: str = Field(" An unhelpful answer:", description="feedback phrase before a dispreferred response")
    forms: str = Field("single,chained", description="sequences per pair: single (each response alone), chained (both orders)")
    attention_drop: float = Field(0.0, ge=0, le=0.05, description="randomly hide this share of past positions from attention (0-5%)")
    sft_weight: float = Field(0.0, ge=0, description="weight λ of an SFT term on prompt + preferred response")

    @field_validator("forms")
    @classmethod
    def _forms(cls, value: str) -> str:
        from alignkit.data.coh import FORMS

        return comma_choices(value, FORMS, "form")


class RLConfig(RunConfig):
    """Online RL settings shared by PPO and RLOO: prompts, reward source, sampling, KL penalty."""

    inputs: ClassVar[str] = "prompts"

    max_steps: int | None = Field(None, gt=0, description="rollout batches (PPO/RLOO iterations) to run (overrides --epochs)")
    epochs: float = Field(1.0, gt=0, description="passes over the training prompts")
    prompts: str = Field(description="prompt file (records with `prompt`: a string or chat messages) or hub dataset id")
    eval_prompts: str | None = Field(None, description="held-out prompts; default: hold out --eval-fraction of --prompts")
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of --prompts held out for evaluation")
    reward_model: str | None = Field(None, description="reward model folder written by `alignkit rm`")
    reward: str | None = Field(None, description="reward function module:function or file.py:function, called as f(prompts, responses) -> scores; or vader, or sklearn:PATH")
    missing_eos_penalty: float | None = Field(None, description="added to the score of a response that never reached EOS (e.g. -1.0)")
    monitor_reward: str | None = Field(None, description="a second scorer (module:function, file.py:function, vader or "
                                       "sklearn:PATH), logged as `monitor` for every rollout batch and never trained "
                                       "on: with a gold scorer, it shows when the policy starts to over-optimise the "
                                       "reward model")
    reward_timeout: float = Field(600.0, gt=0, description="seconds a reward function (--reward, --monitor-reward) "
                                  "may take to score one batch; past it the run stops with an error (a hung scorer)")
    batch_size: int = Field(16, gt=0, description="prompts per rollout batch")
    mini_batch_size: int = Field(8, gt=0, description="sequences per optimizer update")
    ppo_epochs: int = Field(2, gt=0, description="passes over each rollout batch")
    learning_rate: float = Field(1e-5, gt=0, description="peak learning rate (AdamW)")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="share of updates with linear warm-up")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field("constant", description="schedule after warm-up")
    max_new_tokens: int = Field(64, gt=0, description="longest response to sample")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (log-probs are computed at the same temperature)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens (0 = off)")
    backend: Literal["hf", "vllm"] = Field("hf", description="sampling engine: hf (the policy itself, any machine) or "
                                           "vllm (vLLM on a CUDA GPU, its weights refreshed from the policy after "
                                           "every update; pip install \"alignkit[vllm]\")")
    score_tokens: int = Field(4096, gt=0, description="token budget (rows x width) of one forward when scoring "
                              "rollouts with the policy and the reference (larger suits GPUs)")
    packing: bool = Field(True, description="score rollouts with the reference, and train on them (the policy; PPO's "
                          "value model too), packed without padding, a prompt laid out once for all its samples "
                          "(GPT-2 and Llama-family models); off: padded rows")
    beta: float = Field(0.05, ge=0, description="KL penalty coefficient β (initial value when adaptive)")
    adaptive_kl: bool = Field(False, description="adapt β towards --kl-target (Ziegler et al. 2019)")
    kl_target: float = Field(6.0, gt=0, description="target sequence KL (nats) for the adaptive β")
    kl_horizon: int = Field(10000, gt=0, description="horizon of the adaptive β controller")
    reference: Literal["copy", "lora-disabled"] = Field("copy", description="reference policy: a frozen copy, or the base with LoRA disabled")
    cliprange: float = Field(0.2, gt=0, description="clipping of the policy ratio")
    eval_samples: int = Field(64, ge=0, description="held-out prompts scored at each evaluation (0 = no evaluation)")

    def _check_reward(self):
        if bool(self.reward_model) == bool(self.reward):
            raise ValueError("give exactly one of --reward-model PATH or --reward module:function")

    @model_validator(mode="after")
    def _rl(self):
        self._check_reward()
        if self.reference == "lora-disabled" and not self.lora:
            raise ValueError("reference 'lora-disabled' needs --lora")
        if self.gradient_accumulation_steps != 1:
            raise ValueError("online methods take one optimizer step per minibatch: use --mini-batch-size, "
                             "not --gradient-accumulation-steps")
        return self


class PPOConfig(RLConfig):
    """PPO with a per-token KL penalty to the reference, a value model and GAE (docs/algorithms.md, PPO)."""

    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount γ")
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ")
    cliprange_value: float = Field(0.2, gt=0, description="clipping of the value update")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    whiten_advantages: bool = Field(True, description="normalise advantages over the batch")
    value_model: str | None = Field(None, description="value model initialisation (default: the reward model, else the policy)")


class RLOOConfig(RLConfig):
    """RLOO: k samples per prompt, leave-one-out baseline on the sequence reward (docs/algorithms.md, RLOO)."""

    k: int = Field(4, ge=2, description="samples per prompt")
    ppo_epochs: int = Field(1, gt=0, description="passes over each rollout batch (>1 uses the clipped ratio)")
    batch_size: int = Field(8, gt=0, description="prompts per rollout batch (each sampled k times)")


class GRPOConfig(RLConfig):
    """GRPO: G samples per prompt, each one's advantage its reward's deviation within the group, a clipped
    per-token surrogate; Dr. GRPO and DAPO as loss types (docs/algorithms.md, GRPO)."""

    num_generations: int = Field(4, ge=2, description="samples per prompt G (a group)")
    batch_size: int = Field(8, gt=0, description="prompts per rollout batch (each sampled G times)")
    ppo_epochs: int = Field(1, gt=0, description="passes over each rollout batch (>1 reuses it, clipped)")
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = Field(
        "grpo", description="grpo (per-response token mean, rewards scaled by the group's std), dr_grpo (a constant "
        "normaliser, no std scaling) or dapo (token mean over the batch)")
    epsilon_high: float | None = Field(None, gt=0, description="upper clipping of the ratio (default: --cliprange; "
                                       "DAPO's clip-higher takes it larger, e.g. 0.28)")
    scale_rewards: bool | None = Field(None, description="divide the group-centred rewards by the group's std "
                                       "(default: on, off for dr_grpo)")
    beta: float = Field(0.0, ge=0, description="weight of the per-token k3 KL to the reference (0: off)")
    reference: Literal["copy", "lora-disabled", "none"] = Field(
        "copy", description="reference policy: a frozen copy, the base with LoRA disabled, or none (with --beta 0: "
        "no reference pass and no KL logged, a model's memory saved)")

    @model_validator(mode="after")
    def _reference_needed(self):
        if self.reference == "none" and self.beta > 0:
            raise ValueError(f"reference 'none' leaves no KL to weigh: --beta {self.beta} needs --reference copy "
                             "(or lora-disabled with --lora)")
        return self

    @property
    def scaled(self) -> bool:
        return self.loss_type != "dr_grpo" if self.scale_rewards is None else self.scale_rewards


class OnlineDPOConfig(RLConfig, JudgeSettings):
    """Online DPO: two samples per prompt from the current policy, the better one by the reward source or the
    judge, a DPO-family loss on the pairs (docs/algorithms.md, Online DPO)."""

    loss: Literal["dpo", "ipo", "hinge"] = Field("dpo", description="preference loss on the sampled pairs")
    beta: float = Field(0.1, gt=0, description="strength of the KL constraint to the reference")
    batch_size: int = Field(8, gt=0, description="prompts per rollout batch (each sampled twice: one pair)")
    mini_batch_size: int = Field(16, ge=2, description="sequences (two per pair) per optimizer update")
    ppo_epochs: int = Field(1, gt=0, description="passes over each rollout batch's pairs")
    learning_rate: float = Field(5e-6, gt=0, description="peak learning rate (AdamW)")

    @model_validator(mode="after")
    def _no_adaptive_kl(self):
        if self.adaptive_kl:
            raise ValueError("online DPO keeps β fixed; drop --adaptive-kl")
        return self

    def _check_reward(self):  # a judge is a third way to label the pairs
        if sum(map(bool, (self.reward_model, self.reward, self.judge or self.judge_url))) != 1:
            raise ValueError("give exactly one of --reward-model PATH, --reward module:function, or a judge (--judge "
                             "MODEL, or --judge-url URL --judge-model NAME)")


def _format_validation(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown setting"
        elif e["type"] == "missing":
            msg = "required setting is missing"
        lines.append(f"{where}: field '{field}': {msg}" if field else f"{where}: {msg}")
    return "; ".join(lines)


def load_config(cls: type[BaseModel], *, file: str | None = None, overrides: dict | None = None) -> BaseModel:
    """Build a config from a YAML file (optional) and overrides (CLI flags win). Errors name file and field."""
    values: dict = {}
    where = "config"
    if file:
        import yaml

        where = file
        try:
            if Path(file).exists() and not Path(file).is_file():  # a folder, a pipe, /dev/zero: never read
                raise ConfigError(f"config file {file} is not a regular file")
            data = Path(file).read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read config file {file}: {e.strerror}") from e
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise ConfigError(f"{file}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x}); a config file is "
                              "YAML text") from None
        try:
            loaded = yaml.load(text, Loader=_config_loader())  # noqa: S506 - a SafeLoader (below)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{file}{line}: not valid YAML: {getattr(e, 'problem', e)}") from e
        except RecursionError:
            raise ConfigError(f"{file}: not valid YAML: nested too deeply") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: a config file must hold a mapping of settings, not {type(loaded).__name__}")
        for k, v in loaded.items():  # "\ud800" in YAML: text no tokenizer, JSON or YAML writer takes
            if not isinstance(k, str):
                raise ConfigError(f"{file}: setting names are text, got {k!r} ({type(k).__name__})")
            for text in (k, v):
                if isinstance(text, str) and (problem := not_unicode(text)):
                    raise ConfigError(f"{file}: field '{k!s}': {problem}")
        loaded.pop("method", None)  # written by save_config: the command already says which method
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    values.update(overrides or {})
    try:
        return cls(**values)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, where if file else "options")) from e


def _config_loader():
    """PyYAML's SafeLoader, stricter where a config file would otherwise go wrong quietly or with a traceback: a
    setting given twice (the last would win), an integer too long for Python to convert."""
    import yaml
    from yaml.constructor import ConstructorError

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in seen:
                        raise ConstructorError(None, None, f"setting '{key.value}' appears twice (first on line "
                                               f"{seen[key.value] + 1})", key.start_mark)
                    seen[key.value] = key.start_mark.line
            return super().construct_mapping(node, deep=deep)

        def construct_yaml_int(self, node):
            try:
                return super().construct_yaml_int(node)
            except ValueError:  # Python converts integers of at most sys.get_int_max_str_digits() digits
                import sys

                raise ConstructorError(None, None, f"a number has more than {sys.get_int_max_str_digits()} digits",
                                       node.start_mark) from None

    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)
    return Loader


def save_config(cfg: BaseModel, path: str | Path, *, method: str) -> None:
    import yaml

    data = {"method": method, **cfg.model_dump()}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
