"""`alignkit demo`: a complete alignment experiment with a gold reward, every stage cached in the run folder.

Three tasks: "sentiment" (default) asks a chat model for film reviews and scores them with VADER; "imdb" is the
DPO paper's setup (`alignkit.lab.imdb`): the policy continues 2-8-token IMDb review prefixes and a TF-IDF +
logistic-regression classifier trained on the IMDb train split is the gold; "arithmetic" (`alignkit.lab.arithmetic`)
asks small word problems, and the reward the online methods train on is the gold itself, exact match of the final
number (RL with a verifiable reward: no labels, no reward model, no offline methods).

Stages (a stage whose folder holds a `DONE` marker is skipped when the demo is run again):
  base     --quick: a tiny model fine-tuned to write short reviews; imdb: the policy fine-tuned to continue
           IMDb reviews (the reference of every method)
  gold     imdb only: the gold classifier, with its test-split accuracy
  prompts  training and held-out prompts (held-out ones: other phrasings, subjects and titles; imdb: the test split)
  samples  K responses per training prompt from the reference, with their gold scores
  labels   a simulated annotator panel (or with --annotator judge:..., a language model as judge) votes on every
           pair of a prompt's samples -> all_votes.jsonl, and its best-vs-worst pair per prompt -> votes.jsonl
  rm       a reward model trained on every pair's votes (soft labels, a prompt's responses scored once)
  <method> ppo, rloo, grpo, online-dpo (against the reward model), dpo, cdpo, ipo, gdpo (soft labels), simpo,
           orpo, coh (from votes.jsonl), kto (from all_votes.jsonl, split into good and bad responses)
  eval     every policy and the reference on held-out prompts: gold score, win rate, KL, RM accuracy
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alignkit.console import say
from alignkit.errors import ConfigError
from alignkit.lab import arithmetic, imdb
from alignkit.lab.annotators import annotate_groups, judge_groups
from alignkit.lab.sentiment import prompt_capacity, quick_reviews, review_prompts
from alignkit.train.config import AUTO_PRECISION, comma_choices

METHODS = ("ppo", "rloo", "grpo", "online-dpo", "dpo", "cdpo", "ipo", "gdpo", "simpo", "orpo", "kto", "coh")
DEFAULT_METHODS = ("ppo", "rloo", "dpo", "cdpo", "ipo", "gdpo", "coh")  # the default run's time budget; --quick: all
VERIFIABLE_METHODS = ("ppo", "rloo", "grpo", "online-dpo")  # the arithmetic task's: online, on the gold reward
IMDB_HUB_ID = imdb.HUB_ID
ALL_VOTES = "all_votes.jsonl"  # beside votes.jsonl in labels/: the panel's votes on every pair
JUDGE_CRITERION = "the more positive review: more enthusiastic and more favourable about the film"


class DemoConfig(BaseModel):
    """The sentiment alignment demo: the policy learns to write positive reviews, judged by a gold scorer."""

    model_config = ConfigDict(extra="forbid")

    output_dir: str = Field("runs/demo", description="run folder; stages already finished there are reused")
    task: Literal["sentiment", "imdb", "arithmetic"] = Field(
        "sentiment", description="sentiment: review-writing prompts, VADER gold; imdb: IMDb review prefixes, a "
        "TF-IDF + logistic-regression gold trained on the IMDb train split (see --data); arithmetic: small word "
        "problems, exact match of the final number as gold and as the reward of the online methods (default "
        "methods grpo,rloo)")
    data: str = Field(IMDB_HUB_ID, description="imdb: a folder with train/test review files (e.g. "
                      "../shared/data/imdb) or a hub dataset id")
    sft_examples: int = Field(256, ge=0, description="imdb: reviews the policy first learns to continue (0 = none)")
    model: str = Field("smollm2-135m-instruct", description="policy and reference to start from")
    quick: bool = Field(False, description="a tiny model and small sizes: the whole demo in a few minutes")
    methods: str = Field(",".join(DEFAULT_METHODS), description=f"methods to run, comma-separated, of {', '.join(METHODS)} "
                         "(--quick: all of them)")
    train_prompts: int = Field(96, gt=0, description="training prompts (K responses each are sampled and labelled)")
    heldout_prompts: int = Field(48, gt=0, description="held-out prompts for the evaluation")
    k: int = Field(4, ge=2, description="responses sampled per training prompt: the panel votes on every pair of "
                   "them, and RLOO and GRPO sample as many per prompt (32 / k prompts per rollout batch)")
    annotator: str = Field("panel", description="who labels the samples: panel (simulated annotators who see the "
                           "gold score), or judge:MODEL (a local language model as judge) or judge:MODEL@URL (a model "
                           "an OpenAI-compatible server serves), asked which review is more positive")
    annotators: int = Field(5, ge=1, description="simulated annotators per pair")
    noise: float = Field(0.2, ge=0, description="annotator Bradley-Terry noise on the gold scale (0 = perfect judge)")
    max_new_tokens: int = Field(32, gt=0, description="longest response sampled")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the labels' samples, the online "
                               "methods and the evaluation")
    beta: float = Field(0.1, gt=0, description="KL strength for DPO-family and the RL penalty")
    ipo_beta: float = Field(0.1, gt=0, description="IPO's β (its target margin is 1/(2β) nats)")
    rm_epochs: float = Field(2.0, gt=0, description="passes of the reward model over the panel's votes")
    learning_rate: float = Field(5e-5, gt=0, description="learning rate of the DPO family and CoH")
    rm_learning_rate: float = Field(1e-4, gt=0, description="learning rate of the reward model")
    rl_learning_rate: float = Field(3e-5, gt=0, description="learning rate of RLOO")
    ppo_learning_rate: float = Field(7e-5, gt=0, description="learning rate of PPO (policy and value model)")
    ppo_epochs: int = Field(1, gt=0, description="PPO's passes over each rollout batch (8 samples, in mini-batches "
                            "of 4: the clipped ratio acts from the second mini-batch on)")
    epochs: float = Field(1.0, gt=0, description="passes over the labelled pairs (offline methods)")
    coh_passes: float = Field(1.0, gt=0, description="Chain of Hindsight passes as a multiple of --epochs (it "
                              "learns the feedback-conditional more slowly than a pairwise loss)")
    coh_forms: str = Field("chained", description="Chain of Hindsight's sequences per pair: chained (both responses "
                           "under their phrases, in both orders) and/or single (each response alone); --quick: both")
    rl_steps: int = Field(8, gt=0, description="rollout batches for PPO, RLOO, GRPO and online DPO")
    lora: bool = Field(False, description="train LoRA adapters instead of all weights")
    train_layers: int = Field(0, ge=0, description="policies: train only the top N transformer blocks (0 = all)")
    rm_train_layers: int = Field(0, ge=0, description="reward model: train only its top N transformer blocks and "
                                 "its score head (0 = all; 10 of SmolLM2's 30 at --rm-learning-rate 2e-4: faster, "
                                 "its accuracy in docs/benchmarks.md)")
    seed: int = Field(0, description="random seed")
    mixed_precision: Literal["no", "bf16", "auto"] = Field(
        "auto", description="autocast precision of the reward model, the methods, the samples for labels and the "
        f"evaluation's scoring passes (the reference's log-probs for KL, the reward model's scores); {AUTO_PRECISION}; "
        "the evaluation's sampling stays float32 (--quick and --task arithmetic: no)")
    backend: Literal["hf", "vllm"] = Field("hf", description="sampling engine for RL, the labels' samples and "
                                           "evaluation: hf (any machine) or vllm (a CUDA GPU)")
    progress: bool = Field(True, description="show progress bars")

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: str) -> str:
        return comma_choices(value, METHODS, "method")

    @field_validator("coh_forms")
    @classmethod
    def _coh_forms(cls, value: str) -> str:
        from alignkit.data.coh import FORMS

        return comma_choices(value, FORMS, "form")

    @field_validator("annotator")
    @classmethod
    def _annotator(cls, value: str) -> str:
        if value != "panel" and not value.startswith("judge:"):
            raise ValueError(f"annotator must be panel, judge:MODEL or judge:MODEL@URL, got {value!r}")
        return value

    def judge_settings(self):
        """The judge of `--annotator judge:...` (None for the simulated panel): the criterion rubric, asking for the
        more positive review, with the judge's verdicts cached under $ALIGNKIT_CACHE."""
        if self.annotator == "panel":
            return None
        from alignkit.judges import parse_judge_spec
        from alignkit.judges.config import JudgeSettings

        model, url = parse_judge_spec(self.annotator.removeprefix("judge:"))
        where = {"judge_url": url, "judge_model": model} if url else {"judge": model}
        return JudgeSettings(**where, rubric="criterion", criterion=JUDGE_CRITERION)

    @model_validator(mode="after")
    def _what_trains(self):
        if self.lora and (self.train_layers or self.rm_train_layers):
            raise ValueError("lora and train_layers / rm_train_layers both choose what is trained: give one of them")
        return self

    @model_validator(mode="after")
    def _verifiable(self):
        if self.task == "arithmetic":
            if self.quick:
                raise ValueError("the arithmetic task has no --quick form (a tiny model cannot learn arithmetic in a "
                                 "minute); run it on a pretrained model such as the default SmolLM2")
            other = [m for m in self.methods.split(",") if m not in VERIFIABLE_METHODS]
            if other and "methods" in self.model_fields_set:
                raise ValueError(f"the arithmetic task trains the online methods on its verifiable reward: "
                                 f"{', '.join(VERIFIABLE_METHODS)}; not {', '.join(other)}")
        return self

    @model_validator(mode="after")
    def _prompt_counts(self):
        most = prompt_capacity("train") // 2, prompt_capacity("heldout") // 2
        if self.task == "sentiment" and (self.train_prompts > most[0] or self.heldout_prompts > most[1]):
            raise ValueError(f"the sentiment task has at most {most[0]} training and {most[1]} held-out prompts; "
                             f"asked for {self.train_prompts} training and {self.heldout_prompts} held-out")
        return self


QUICK = dict(train_prompts=96, heldout_prompts=48, max_new_tokens=12, learning_rate=1e-3, rm_learning_rate=2e-3,
             rl_learning_rate=1e-3, ppo_learning_rate=1e-3, ppo_epochs=2, epochs=3.0, coh_passes=4.0,
             coh_forms="single,chained", rl_steps=12, beta=0.1, sft_examples=4000, methods=",".join(METHODS),
             mixed_precision="no")  # CI's figures: float32 on every CPU


# the arithmetic task on SmolLM2: room to work the sum out in words (it writes the right number somewhere in a
# quarter of its answers, last in half of those), 4 prompts x 8 samples per step, the top 12 of 30 blocks trained,
# in float32: bf16 autocast made the run 1.13x faster but gained less accuracy in one run each (docs/benchmarks.md)
ARITHMETIC = dict(methods="grpo,rloo", train_prompts=512, heldout_prompts=96, k=8, max_new_tokens=48, rl_steps=14,
                  rl_learning_rate=3e-5, temperature=0.7, train_layers=12, mixed_precision="no")


def _defaults(cfg: DemoConfig) -> dict:
    """The settings a task or --quick changes from the field defaults (each only where not given)."""
    return ARITHMETIC if cfg.task == "arithmetic" else QUICK if cfg.quick else {}


def _done(stage: Path) -> bool:
    return (stage / "DONE").exists()


def _mark(stage: Path, info: dict) -> None:
    (stage / "DONE").write_text(json.dumps(info, indent=2))


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def build_base(cfg: DemoConfig, run: Path) -> str:
    """The reference every method starts from: --quick, a tiny model taught by SFT to write short reviews;
    imdb, the policy taught to continue IMDb reviews; otherwise `cfg.model` itself."""
    from alignkit import SFTConfig, run_sft
    from alignkit.models.load import load_tokenizer
    from alignkit.models.tiny import make_tiny_model

    if not cfg.quick and (cfg.task != "imdb" or cfg.sft_examples == 0):
        return cfg.model
    stage = run / "base"
    if _done(stage):
        return str(stage / "sft")
    stage.mkdir(parents=True, exist_ok=True)
    if cfg.task == "imdb":
        texts, _ = imdb.read_reviews(cfg.data, "train")
        model = make_tiny_model(stage / "tiny", texts[:5000], vocab_size=3000, hidden_size=128, num_layers=2,
                                seed=cfg.seed) if cfg.quick else cfg.model
        rows = imdb.continuation_examples(texts, load_tokenizer(model), cfg.sft_examples, seed=cfg.seed,
                                          length=cfg.max_new_tokens)
        sft = dict(learning_rate=3e-3, max_steps=400, batch_size=32) if cfg.quick else \
            dict(learning_rate=cfg.learning_rate, epochs=1.0, batch_size=8, max_length=128, max_prompt_length=16)
    else:
        prompts = review_prompts(400, split="train", seed=cfg.seed + 1) + review_prompts(100, split="heldout",
                                                                                         seed=cfg.seed + 1)
        reviews = quick_reviews(len(prompts), seed=cfg.seed)
        rows = [{"prompt": _messages(p), "completion": r} for p, r in zip(prompts, reviews, strict=True)]
        model = make_tiny_model(stage / "tiny", prompts + reviews, vocab_size=600, hidden_size=96, num_layers=2,
                                seed=cfg.seed)
        sft = dict(learning_rate=3e-3, max_steps=150, batch_size=16)
    data = _jsonl(stage / "demos.jsonl", rows)
    run_sft(SFTConfig(model=model, data=data, output_dir=str(stage / "sft"), eval_fraction=0.05,
                      progress=cfg.progress, seed=cfg.seed, **sft))
    _mark(stage, {"demos": len(rows)})
    return str(stage / "sft")


def stage_gold(cfg: DemoConfig, run: Path) -> str:
    """The gold reward spec: VADER, (imdb) the classifier trained on the IMDb train split, or (arithmetic) exact
    match of the final number."""
    if cfg.task == "arithmetic":
        return "alignkit.lab.arithmetic:exact_match"
    if cfg.task != "imdb":
        return "vader"
    stage = run / "gold"
    path = stage / "classifier.joblib"
    if not _done(stage):
        info = imdb.train_gold(cfg.data, path, seed=cfg.seed)
        say(f"gold classifier: test accuracy {info['test_accuracy']:.4f} ({info['test']} reviews)")
        _mark(stage, info)
    return f"sklearn:{path}"


def stage_prompts(cfg: DemoConfig, run: Path, reference: str) -> tuple[str, str]:
    from alignkit.models.load import load_tokenizer

    stage = run / "prompts"
    train, held = stage / "train.jsonl", stage / "heldout.jsonl"
    if not _done(stage):
        stage.mkdir(parents=True, exist_ok=True)
        if cfg.task == "imdb":  # raw-text review prefixes: training from the train split, held-out from test
            tok = load_tokenizer(reference)
            tr = imdb.prefix_prompts(imdb.read_reviews(cfg.data, "train")[0], tok, cfg.train_prompts, seed=cfg.seed)
            ho = imdb.prefix_prompts(imdb.read_reviews(cfg.data, "test")[0], tok, cfg.heldout_prompts, seed=cfg.seed)
        elif cfg.task == "arithmetic":  # no problem in both
            tr, ho = (list(map(_messages, x)) for x in arithmetic.problems(cfg.train_prompts, cfg.heldout_prompts,
                                                                           seed=cfg.seed))
        else:
            tr = [_messages(p) for p in review_prompts(cfg.train_prompts, split="train", seed=cfg.seed)]
            ho = [_messages(p) for p in review_prompts(cfg.heldout_prompts, split="heldout", seed=cfg.seed)]
        _jsonl(train, [{"prompt": p} for p in tr])
        _jsonl(held, [{"prompt": p} for p in ho])
        _mark(stage, {"train": cfg.train_prompts, "heldout": cfg.heldout_prompts})
    return str(train), str(held)


def stage_samples_and_labels(cfg: DemoConfig, run: Path, reference: str, train_prompts: str, gold_spec: str) -> str:
    """K samples per prompt from the reference, gold-scored; the panel votes on every pair of a prompt's samples
    (`annotate_groups`): `votes.jsonl` holds its best-vs-worst pair (the pair the offline methods learn from),
    `all_votes.jsonl` every pair (the reward model's data)."""
    from alignkit.data import load_prompts
    from alignkit.models.load import autocast, load_tokenizer
    from alignkit.rollout.rewards import CallableReward
    from alignkit.rollout.sample import SampleSettings, sample_policy

    stage = run / "labels"
    votes = stage / "votes.jsonl"
    if _done(stage):
        return str(votes)
    stage.mkdir(parents=True, exist_ok=True)
    prompts, _ = load_prompts(train_prompts)
    settings = SampleSettings(max_new_tokens=cfg.max_new_tokens, samples=cfg.k, seed=cfg.seed + 7, batch_size=64,
                              temperature=cfg.temperature, backend=cfg.backend)
    t0 = time.perf_counter()
    with autocast(cfg.mixed_precision):
        sm = sample_policy(reference, load_tokenizer(reference), prompts, settings)
    gold = CallableReward(gold_spec)(sm.prompts, sm.responses).tolist()
    _jsonl(stage / "samples.jsonl", [{"prompt": p, "response": r, "gold": g}
                                     for p, r, g in zip(sm.prompts, sm.responses, gold, strict=True)])
    k = cfg.k  # the k samples of one prompt are consecutive
    groups = [sm.responses[i : i + k] for i in range(0, len(sm.responses), k)]
    group_gold = [gold[i : i + k] for i in range(0, len(gold), k)]
    judge = cfg.judge_settings()
    if judge is None:
        records, every, skipped = annotate_groups(sm.prompts[::k], groups, group_gold, annotators=cfg.annotators,
                                                  noise=cfg.noise, seed=cfg.seed)
    else:
        records, every, skipped = judge_groups(judge, sm.prompts[::k], groups, group_gold, seed=cfg.seed,
                                               progress=cfg.progress)
    if skipped:
        say(f"{skipped} prompts skipped: fewer than two distinct non-empty responses")
    _jsonl(votes, records)
    _jsonl(stage / ALL_VOTES, every)
    _mark(stage, {"samples": len(sm.responses), "pairs": len(records), "all_pairs": len(every), "prompts_skipped": skipped,
                  "seconds": time.perf_counter() - t0})
    return str(votes)


def _common(cfg: DemoConfig, out: Path) -> dict:
    return dict(output_dir=str(out), seed=cfg.seed, progress=cfg.progress, lora=cfg.lora, train_layers=cfg.train_layers,
                mixed_precision=cfg.mixed_precision)


def stage_train(cfg: DemoConfig, run: Path, name: str, reference: str, votes: str, train_prompts: str, rm: str,
                gold: str) -> str:
    from alignkit import (
        CoHConfig,
        DPOConfig,
        GRPOConfig,
        KTOConfig,
        OnlineDPOConfig,
        PPOConfig,
        RewardConfig,
        RLOOConfig,
        run_coh,
        run_dpo,
        run_grpo,
        run_kto,
        run_online_dpo,
        run_ppo,
        run_reward,
        run_rloo,
    )

    out = run / name
    if _done(out):
        return str(out)
    t0 = time.perf_counter()
    offline = dict(model=reference, data=votes, data_format="votes", epochs=cfg.epochs, batch_size=8,
                   learning_rate=cfg.learning_rate, eval_fraction=0.1, max_length=256, max_prompt_length=128,
                   warmup_ratio=0.1, **_common(cfg, out))
    online = dict(model=reference, prompts=train_prompts, reward_model=rm, max_steps=cfg.rl_steps, batch_size=8,
                  mini_batch_size=4, warmup_ratio=0.1, learning_rate=cfg.rl_learning_rate, max_new_tokens=cfg.max_new_tokens,
                  temperature=cfg.temperature, beta=cfg.beta * 0.5, eval_samples=0, max_length=256, max_prompt_length=128, monitor_reward=gold,
                  reference="lora-disabled" if cfg.lora else "copy", backend=cfg.backend, **_common(cfg, out))
    groups = {"batch_size": max(1, 32 // cfg.k)}  # RLOO and GRPO: 32 samples per rollout batch
    if cfg.task == "arithmetic":  # the verifiable reward itself, no reward model
        online = {**{k: v for k, v in online.items() if k != "reward_model"}, "reward": gold, "monitor_reward": None}
    if name == "rm":
        # every pair's votes, grouped by prompt: a batch of 2 prompts is 8 responses and 12 pairs
        run_reward(RewardConfig(**{**offline, "data": str(Path(votes).with_name(ALL_VOTES)), "batch_size": 2,
                                   "learning_rate": cfg.rm_learning_rate, "epochs": cfg.rm_epochs,
                                   "train_layers": cfg.rm_train_layers}))
    elif name in ("dpo", "cdpo", "ipo", "gdpo"):
        beta = cfg.ipo_beta if name == "ipo" else cfg.beta
        run_dpo(DPOConfig(loss=name, beta=beta, **offline))
    elif name in ("simpo", "orpo"):  # no reference; SimPO at its own β scale (DPOConfig's default for it)
        run_dpo(DPOConfig(loss=name, **offline))
    elif name == "kto":  # the panel's votes on every pair: responses that won more of their pairs are the good ones
        run_kto(KTOConfig(beta=cfg.beta, **{**offline, "data": str(Path(votes).with_name(ALL_VOTES))}))
    elif name == "coh":
        # the chained sequences, each response beside the other under its phrase, teach the contrast that moves
        # sampling; single sequences alone barely do, and add little beside them on SmolLM2 at twice the cost
        # (docs/benchmarks.md). 4 pairs per micro-batch and 2 micro-batches per step bound the peak memory
        run_coh(CoHConfig(forms=cfg.coh_forms, gradient_accumulation_steps=2,
                          **{**offline, "batch_size": 4, "epochs": cfg.epochs * cfg.coh_passes,
                             "learning_rate": cfg.learning_rate * 2}))
    elif name == "ppo":
        run_ppo(PPOConfig(**{**online, "learning_rate": cfg.ppo_learning_rate, "beta": cfg.beta,
                             "ppo_epochs": cfg.ppo_epochs}))
    elif name == "rloo":
        run_rloo(RLOOConfig(**{**online, **groups, "k": cfg.k}))
    elif name == "grpo":  # without a KL term (its default, as in TRL): the clipped ratio alone keeps it near
        run_grpo(GRPOConfig(**{**online, **groups, "num_generations": cfg.k, "beta": 0.0}))
    elif name == "online-dpo":  # 8 prompts, 8 pairs, one update per rollout batch, at the DPO family's rate
        run_online_dpo(OnlineDPOConfig(**{**online, "mini_batch_size": 16, "beta": cfg.beta,
                                          "learning_rate": cfg.learning_rate}))
    else:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    _mark(out, {"seconds": time.perf_counter() - t0})
    return str(out)


RERUN_FREE = {"methods", "progress", "output_dir"}  # settings that may change between runs in one folder
# settings newer than some run folders: what the code before them did
ADDED_LATER = {"mixed_precision": "no", "ppo_epochs": 2, "coh_forms": "single,chained"}


def _check_same_settings(cfg: DemoConfig, stored: Path) -> None:
    """Finished stages are reused, so a rerun in the same folder must ask for the same experiment."""
    if not stored.exists():
        return
    old = {**ADDED_LATER, **json.loads(stored.read_text())}
    changed = sorted(k for k, v in cfg.model_dump().items() if k not in RERUN_FREE and k in old and old[k] != v)
    if changed:
        details = ", ".join(f"{k}: {old[k]!r} -> {getattr(cfg, k)!r}" for k in changed)
        raise ConfigError(f"{stored.parent} holds a demo run with other settings ({details}); its finished stages "
                          "would be reused, so give a new --output-dir (only --methods may change)")


def run_demo(cfg: DemoConfig) -> dict:
    """Run (or resume) the demo; returns the evaluation results (also in output_dir/eval/results.json)."""
    from alignkit.data import load_prompts
    from alignkit.evaluate.report import write_report
    from alignkit.evaluate.run import evaluate_policies, results_table
    from alignkit.rollout.backends import check_backend
    from alignkit.rollout.sample import SampleSettings
    from alignkit.train.common import return_freed_memory

    check_backend(cfg.backend)
    if cfg.judge_settings() is not None:  # a judge that cannot work is refused before any stage runs
        from alignkit.judges import check_judge

        check_judge(cfg.judge_settings())
    cfg = cfg.model_copy(update={k: v for k, v in _defaults(cfg).items() if k not in cfg.model_fields_set})
    run = Path(cfg.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    _check_same_settings(cfg, run / "demo_config.json")
    (run / "demo_config.json").write_text(cfg.model_dump_json(indent=2))
    times: dict[str, float] = {}

    def timed(stage, fn, *args, **kwargs):
        t0 = time.perf_counter()
        say(f"== {stage}")
        result = fn(*args, **kwargs)
        return_freed_memory()  # each stage starts from what is in use, not from the last one's peak
        times[stage] = round(time.perf_counter() - t0, 1)
        return result

    reference = timed("base", build_base, cfg, run)
    gold = timed("gold", stage_gold, cfg, run)
    train_prompts, heldout = timed("prompts", stage_prompts, cfg, run, reference)
    votes = rm = None
    if cfg.task != "arithmetic":
        votes = timed("samples+labels", stage_samples_and_labels, cfg, run, reference, train_prompts, gold)
        rm = timed("rm", stage_train, cfg, run, "rm", reference, votes, train_prompts, "", gold)
    methods = cfg.methods.split(",")
    policies = {m: timed(m, stage_train, cfg, run, m, reference, votes, train_prompts, rm, gold) for m in methods}
    prompts, _ = load_prompts(heldout)
    # 96 rows a batch: the default's 48 prompts x 2 in one, about 10% faster than two batches of 64 and 32
    settings = SampleSettings(max_new_tokens=cfg.max_new_tokens, samples=4 if cfg.quick else 2, seed=cfg.seed + 99,
                              batch_size=96, temperature=cfg.temperature, backend=cfg.backend)
    results = timed("eval", evaluate_policies, policies, reference, prompts, gold, reward_model=rm,
                    settings=settings, output_dir=run / "eval", mixed_precision=cfg.mixed_precision)
    results["stage_seconds"] = times
    if cfg.task == "imdb":
        results["gold_classifier"] = json.loads((run / "gold" / "DONE").read_text())
    (run / "eval" / "results.json").write_text(json.dumps(results, indent=2))
    table = results_table(results)
    runs = {**({"rm": Path(rm)} if rm else {}), **{m: Path(p) for m, p in policies.items()}}
    page = write_report(results, run / "eval", runs, table)
    print(table)
    print(f"report: {page} (frontier.png, curves.png and results.json beside it)")
    return results
