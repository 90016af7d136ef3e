"""Peer benchmark: Hugging Face TRL 1.16 on the same tiny settings as train.py / rl.py (one JSON object per setting).

    .venv/bin/python benchmarks/trl_peer.py                          # every setting
    .venv/bin/python benchmarks/trl_peer.py --setting trl-dpo        # one setting
    .venv/bin/python benchmarks/trl_peer.py --python /path/to/trl/venv/bin/python

TRL is never a dependency of alignkit. It lives in its own virtual environment (default /work/trlvenv):
    python3 -m venv /work/trlvenv && /work/trlvenv/bin/pip install torch==2.13.0 && \
        /work/trlvenv/bin/pip install trl==1.16.0
When that interpreter or its `trl` is missing, each setting prints {"setting": ..., "skipped": reason} and the
script exits 0.

How it runs: this process (alignkit's venv) builds the data and the model exactly as train.py does, once, into a
temporary folder: make_pairs(512, 0, 4, 120) and the tiny GPT-2 (4 layers, width 256, 2k BPE vocabulary trained
on those pairs). Each setting then runs in a fresh process of the TRL interpreter (`--run-trl`, a mode that imports
only the standard library, torch, transformers, datasets, trl and the stdlib-only `common` module), so its peak
RSS is its own. All settings train in float32 on the CPU (TRL's default bf16 autocast and gradient
checkpointing are switched off; the -bf16 settings keep bf16 autocast on), AdamW, linear schedule with 10% warm-up, seed 42, no evaluation, no saving.

Settings:
- trl-dpo: DPOTrainer, sigmoid loss (standard DPO on summed completion log-probs), beta 0.1, a live reference
  model (a second copy, run under no_grad each step), batch 8 pairs, one epoch over the 512 pairs, lr 1e-5,
  max_length 512. TRL 1.16 has no max_prompt_length; the longest prompt is reported instead.
- trl-rm: RewardTrainer (AutoModelForSequenceClassification, num_labels=1, Bradley-Terry loss), batch 8 pairs,
  one epoch over the same pairs, lr 1e-5, max_length 512 (TRL drops longer pairs rather than truncating them).
- trl-rloo: RLOOTrainer on the tiny GPT-2, the 512 prompts of the pairs as plain-text prompts, reward = the
  GOOD/BAD word rule of rl.py, k = 4 completions per prompt, 32 new tokens, temperature 1.0, KL beta 0.05,
  lr 1e-5, 16 optimizer steps. One step: 8 prompts x 4 completions sampled with model.generate, a no-grad
  forward of the policy (old log-probs) and of the reference, rewards, leave-one-out advantages, one
  forward/backward over the 32 sequences, one AdamW step; 16 x 32 = 512 completions in all.
Whole process (`--whole-process`, settings `dpo`, `rm`, `rloo`, `kto`, `grpo` and `smol-*`): each side run as a user runs it, in a fresh process
timed from the outside (wall time and peak RSS of the process, as /usr/bin/time gives them), alternating alignkit
and TRL `--repeats` times (default 3), on cold caches (a fresh ALIGNKIT_CACHE per alignkit run: its reference
log-probs are computed every time), both saving the trained model. alignkit runs its CLI (`python -m alignkit.cli.main
dpo|rm|rloo|kto|grpo`), TRL a script that builds its trainer, trains and saves (`KTOTrainer`, `GRPOTrainer`), logging
every step, so that the first step's loss of both is reported beside the times.
- dpo, rm: the 512 pairs, batch 8, one epoch, lr 1e-5, max_length 512, alignkit with --eval-fraction 0 so both
  train on all 512; DPO β 0.1, TRL with a live reference (its default), alignkit with its default (reference
  log-probs precomputed, here from a cold cache); alignkit's reward model stores its offset (its default).
- rloo: as trl-rloo (8 prompts x 4 samples a step, 32 new tokens, temperature 1, β 0.05, 16 steps, lr 1e-5), the
  reward the word rule of rl.py as a function for both; alignkit with one update of 32 sequences a step and
  without held-out evaluation.
- kto: 512 unpaired examples from the pairs (pair i gives its chosen response as desirable when i is even, its
  rejected one as undesirable when odd), batch 8, one epoch, β 0.1, λ_D = λ_U = 1, lr 1e-5, max_length 512,
  alignkit with --eval-fraction 0 so both train on all 512; TRL with a live reference (its default), alignkit
  with its default (reference log-probs precomputed, here from a cold cache).
- grpo: the RLOO setting's prompts and reward, 8 prompts x 4 generations per step, 32 new tokens, temperature 1,
  loss type "grpo" (per-response token mean), rewards scaled by the group std, β 0 (TRL's default: no reference
  model; alignkit --reference none), one update of 32 sequences per step, 16 steps, lr 1e-5; alignkit without
  held-out evaluation.
- smol-dpo, smol-rm, smol-rloo: the dpo, rm and rloo settings on SmolLM2-135M-Instruct (the built-in model, as the
  float32 Hugging Face folder alignkit converts it to; both sides load that folder) and 128 HH-RLHF harmless-base
  test pairs: the first in file order whose prompt and both responses are each at most 256 tokens, as plain-text
  prompt/chosen/rejected (no chat template), so max_length 512 truncates nothing; smol-rloo samples for their
  prompts, 8 steps (256 completions) instead of 16. `--smol-model FOLDER` names another model folder; one without weights files gets SmolLM2's
  architecture with random weights (benchmarks/gpu.sh does this: the weights need not travel to a GPU machine).
`--device cuda` runs both sides on the GPU in bf16 autocast (TRL bf16=True, alignkit --mixed-precision bf16);
the default is the CPU in float32. `--data` names the shared data folder (default ../shared/data).

Reported: pairs/s (completions/s for RLOO) = examples / trainer.train() wall time, and end_to_end_* =
examples / end_to_end_s (as train.py's and rl.py's end-to-end figures: loading included); step_median_* over the
optimizer steps only (after the batch is collated, so comparable with train.py's median per-step figures) and
steps_total_s, their sum (wall_s minus it = data loading, callbacks and logging between steps);
tokens/s (all attended tokens, prompts counted in both rows of a pair); TRL's own train_runtime and
train_samples_per_second; end_to_end_s = model/tokenizer loading + trainer construction (dataset tokenisation)
+ train(); train_cpu_s (CPU seconds of train(): well under threads x wall_s means the cores were shared) and
the 1-minute load average at the end, to judge noise; peak RSS of the process; the float32 matmul peak measured
in the same process. On a shared machine torch's OpenMP threads lose much more than their share of the cores
(under load a generate call can run many times slower with 2 threads than with 1): compare figures taken at the
same load only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_PYTHON = "/work/trlvenv/bin/python"
COMMON = dict(lr=1e-5, gradient_checkpointing=False, precision="float32", warmup_ratio=0.1, seed=42)
SETTINGS = {
    "trl-dpo": dict(trainer="DPOTrainer", pairs=512, batch=8, epochs=1, beta=0.1, loss="sigmoid",
                    reference="live copy", max_length=512, max_prompt_length=None, **COMMON),
    "trl-rm": dict(trainer="RewardTrainer", pairs=512, batch=8, epochs=1, max_length=512, **COMMON),
    "trl-rloo": dict(trainer="RLOOTrainer", prompts=512, prompts_per_step=8, k=4, max_new_tokens=32,
                     temperature=1.0, beta=0.05, steps=16, **COMMON),
}
# TRL's own default: bf16 autocast (the peers of train.py's -bf16 settings)
SETTINGS["trl-dpo-bf16"] = dict(SETTINGS["trl-dpo"], precision="bf16")
SETTINGS["trl-rm-bf16"] = dict(SETTINGS["trl-rm"], precision="bf16")


# ---- TRL side: runs under the TRL interpreter (stdlib, torch, transformers, datasets, trl, common) ----------
def _train_args(cls, s: dict, out: str, **kw):
    return cls(output_dir=out, learning_rate=s["lr"], gradient_checkpointing=False, bf16=s["precision"] == "bf16", fp16=False,
               use_cpu=True, report_to="none", save_strategy="no", eval_strategy="no", logging_steps=16,
               disable_tqdm=True, warmup_steps=s["warmup_ratio"], seed=s["seed"], **kw)


def _step_timer(trainer, tokens):
    """A callback timing each optimizer step (batch already collated) and the tokens it consumed."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.tokens = [], []

        def on_step_begin(self, args, state, control, **kw):
            self._t, self._n = time.perf_counter(), tokens(trainer)

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t)
            self.tokens.append(tokens(trainer) - self._n)

    timer = StepTimer()
    trainer.add_callback(timer)
    return timer


def run_trl(name: str, job: dict) -> dict:
    import datasets
    import torch
    import trl
    from common import matmul_peak_gflops, peak_rss_mb
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed

    datasets.disable_progress_bar()
    s = SETTINGS[name]
    model_dir, out = job["model"], job["out"] + "/" + name
    pairs = [json.loads(x) for x in Path(job["pairs"]).read_text().splitlines()]
    peak = matmul_peak_gflops(dtype="bfloat16" if s["precision"] == "bf16" else "float32")
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    extra: dict = {}
    if s["trainer"] == "DPOTrainer":
        from trl import DPOConfig, DPOTrainer

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        cfg = _train_args(DPOConfig, s, out, per_device_train_batch_size=s["batch"], num_train_epochs=s["epochs"],
                          beta=s["beta"], loss_type=[s["loss"]], max_length=s["max_length"],
                          precompute_ref_log_probs=False)
        trainer = DPOTrainer(model=model, ref_model=ref, args=cfg, train_dataset=datasets.Dataset.from_list(pairs),
                             processing_class=tok)
        ds = trainer.train_dataset
        lens = [len(p) + max(len(c), len(r)) for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"],
                                                                   strict=True)]
        extra = {"longest_prompt_tokens": max(len(p) for p in ds["prompt_ids"]), "longest_sequence_tokens": max(lens),
                 "truncated_pairs": sum(n > s["max_length"] for n in lens)}
        n_examples = len(ds) * s["epochs"]
        timer = _step_timer(trainer, lambda t: t._total_train_tokens)
    elif s["trainer"] == "RewardTrainer":
        from trl import RewardConfig, RewardTrainer

        set_seed(s["seed"])  # the score head is initialised randomly
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tok.pad_token_id
        cfg = _train_args(RewardConfig, s, out, per_device_train_batch_size=s["batch"], num_train_epochs=s["epochs"],
                          max_length=s["max_length"])
        trainer = RewardTrainer(model=model, args=cfg, train_dataset=datasets.Dataset.from_list(pairs),
                                processing_class=tok)
        ds = trainer.train_dataset
        extra = {"pairs_dropped_over_max_length": len(pairs) - len(ds),
                 "longest_sequence_tokens": max(max(len(c), len(r)) for c, r in zip(ds["chosen_ids"], ds["rejected_ids"],
                                                                                      strict=True))}
        n_examples = len(ds) * s["epochs"]
        timer = _step_timer(trainer, lambda t: t._total_train_tokens)
    else:
        from trl import RLOOConfig, RLOOTrainer

        good, bad = set(job["good"]), set(job["bad"])

        def word_reward(prompts, completions, **kw):
            out = []
            for r in completions:
                words = [w.strip(".,!").lower() for w in r.split()]
                out.append((sum(w in good for w in words) - sum(w in bad for w in words)) / max(len(words), 1))
            return out

        class TimedRLOO(RLOOTrainer):  # times TRL's sampling call (model.generate) without changing it
            gen_s, gen_tokens, completions = 0.0, 0, 0

            def _generate_single_turn(self, *a, **kw):
                t = time.perf_counter()
                ids = super()._generate_single_turn(*a, **kw)
                self.gen_s += time.perf_counter() - t
                self.gen_tokens += sum(len(c) for c in ids)
                self.completions += len(ids)
                return ids

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        cfg = _train_args(RLOOConfig, s, out, per_device_train_batch_size=s["prompts_per_step"] * s["k"],
                          num_generations=s["k"], max_completion_length=s["max_new_tokens"],
                          temperature=s["temperature"], beta=s["beta"], max_steps=s["steps"])
        extra = {"generation_batch_size": cfg.generation_batch_size, "steps_per_generation": cfg.steps_per_generation,
                 "num_iterations": cfg.num_iterations}
        prompts = datasets.Dataset.from_list([{"prompt": p["prompt"]} for p in pairs])
        trainer = TimedRLOO(model=model, reward_funcs=word_reward, args=cfg, train_dataset=prompts,
                            processing_class=tok)
        timer = _step_timer(trainer, lambda t: t.state.num_input_tokens_seen)
    t1, cpu1 = time.perf_counter(), time.process_time()
    result = trainer.train()
    wall, cpu = time.perf_counter() - t1, time.process_time() - cpu1
    end_to_end = time.perf_counter() - t0
    m = result.metrics
    steps = len(timer.times)
    total_tokens = sum(timer.tokens)
    last_log = [h for h in trainer.state.log_history if "loss" in h][-1:]
    r = {"benchmark": "trl", "setting": name, **s, "trl_version": trl.__version__,
         "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(), "steps": steps}
    if s["trainer"] == "RLOOTrainer":
        n_examples = trainer.completions
        r.update({"completions_generated": n_examples, "completions_per_s": round(n_examples / wall, 2),
                  "end_to_end_completions_per_s": round(n_examples / end_to_end, 2),
                  "gen_tokens": trainer.gen_tokens, "gen_tokens_per_s": round(trainer.gen_tokens / trainer.gen_s, 1),
                  "gen_share_of_wall": round(trainer.gen_s / wall, 3),
                  "step_median_completions_per_s": round(statistics.median(
                      s["prompts_per_step"] * s["k"] / t for t in timer.times), 2)})
    else:
        r.update({"pairs_trained": n_examples, "train_pairs_per_s": round(n_examples / wall, 2),
                  "end_to_end_pairs_per_s": round(n_examples / end_to_end, 2),
                  "step_median_pairs_per_s": round(statistics.median(s["batch"] / t for t in timer.times), 2)})
    r.update({
        "train_tokens_per_s": round(total_tokens / wall, 1),
        "step_median_tokens_per_s": round(statistics.median(n / t for n, t in zip(timer.tokens, timer.times,
                                                                                   strict=True)), 1),
        "wall_s": round(wall, 1), "steps_total_s": round(sum(timer.times), 1), "end_to_end_s": round(end_to_end, 1),
        "train_cpu_s": round(cpu, 1), "loadavg_1m": round(os.getloadavg()[0], 2),
        "trl_train_runtime": m.get("train_runtime"), "trl_train_samples_per_second": m.get("train_samples_per_second"),
        "train_loss": round(m["train_loss"], 4) if "train_loss" in m else None,
        "last_log": {k: round(v, 4) for k, v in last_log[0].items() if isinstance(v, float)} if last_log else None,
        **extra, "peak_rss_mb": peak_rss_mb(), "matmul_peak_gflops": peak,
    })
    return r


# ---- whole process: both sides as commands, timed from outside ------------------------------------------------
WHOLE = {
    "dpo": dict(pairs=512, batch=8, epochs=1, beta=0.1, lr=1e-5, max_length=512, warmup_ratio=0.1, seed=42),
    "rm": dict(pairs=512, batch=8, epochs=1, lr=1e-5, max_length=512, warmup_ratio=0.1, seed=42),
    "rloo": dict(prompts_per_step=8, k=4, max_new_tokens=32, temperature=1.0, beta=0.05, steps=16, lr=1e-5,
                 warmup_ratio=0.1, seed=42),
    "kto": dict(examples=512, batch=8, epochs=1, beta=0.1, lr=1e-5, max_length=512, warmup_ratio=0.1, seed=42),
    "grpo": dict(prompts_per_step=8, k=4, max_new_tokens=32, temperature=1.0, beta=0.0, loss_type="grpo", steps=16,
                 lr=1e-5, warmup_ratio=0.1, seed=42),
}
# SmolLM2-135M-Instruct (the built-in model, as the Hugging Face folder alignkit converts it to) on HH-RLHF
SMOL = dict(model="smollm2-135m-instruct", data="hh-rlhf harmless-base test", pairs=128, cut_tokens=256)
WHOLE["smol-dpo"] = dict(WHOLE["dpo"], **SMOL)
WHOLE["smol-rm"] = dict(WHOLE["rm"], **SMOL)
WHOLE["smol-rloo"] = dict(WHOLE["rloo"], **SMOL, steps=8)  # 256 completions: sampling at this size is slow


def kind(name: str) -> str:
    """The method of a whole-process setting: `smol-dpo` runs as `dpo` on the SmolLM2 job."""
    return name.removeprefix("smol-")


def run_trl_whole(name: str, job: dict) -> dict:
    """The TRL side of a whole-process setting: load, build the trainer, train, save; the first step's loss."""
    import datasets
    import torch
    import trl
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed

    datasets.disable_progress_bar()
    s, model_dir, out = WHOLE[name], job["model"], job["out"]
    name = kind(name)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if name == "rm":
        set_seed(s["seed"])  # the score head is initialised randomly
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tok.pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cuda = job.get("device") == "cuda"  # then in bf16 autocast, as alignkit's --mixed-precision bf16
    common = dict(output_dir=out, learning_rate=s["lr"], gradient_checkpointing=False, bf16=cuda, fp16=False,
                  use_cpu=not cuda, report_to="none", save_strategy="no", eval_strategy="no", logging_steps=1,
                  disable_tqdm=True, warmup_steps=s["warmup_ratio"], seed=s["seed"])
    if name in ("dpo", "rm"):
        pairs = datasets.Dataset.from_list([json.loads(x) for x in Path(job["pairs"]).read_text().splitlines()])
    if name == "dpo":  # a live reference (TRL's default), no gradient checkpointing
        from trl import DPOConfig, DPOTrainer

        ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        cfg = DPOConfig(per_device_train_batch_size=s["batch"], num_train_epochs=s["epochs"], beta=s["beta"],
                        loss_type=["sigmoid"], max_length=s["max_length"], precompute_ref_log_probs=False, **common)
        trainer = DPOTrainer(model=model, ref_model=ref, args=cfg, train_dataset=pairs, processing_class=tok)
    elif name == "rm":
        from trl import RewardConfig, RewardTrainer

        cfg = RewardConfig(per_device_train_batch_size=s["batch"], num_train_epochs=s["epochs"],
                           max_length=s["max_length"], **common)
        trainer = RewardTrainer(model=model, args=cfg, train_dataset=pairs, processing_class=tok)
    elif name == "kto":
        from trl import KTOConfig, KTOTrainer

        rows = [json.loads(x) for x in Path(job["kto"]).read_text().splitlines()]
        cfg = KTOConfig(per_device_train_batch_size=s["batch"], num_train_epochs=s["epochs"], beta=s["beta"],
                        max_length=s["max_length"], **common)
        trainer = KTOTrainer(model=model, args=cfg, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
    else:  # grpo, rloo: the word rule of rl.py as the reward
        from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

        sys.path.insert(0, str(Path(job["reward"]).parent))
        from words import score

        def reward(prompts, completions, **kw):
            return score(prompts, completions)

        rl = dict(per_device_train_batch_size=s["prompts_per_step"] * s["k"], num_generations=s["k"],
                  max_completion_length=s["max_new_tokens"], temperature=s["temperature"], beta=s["beta"],
                  max_steps=s["steps"], **common)
        prompts = datasets.Dataset.from_list([{"prompt": json.loads(x)["prompt"]}
                                              for x in Path(job["prompts"]).read_text().splitlines()])
        if name == "grpo":
            cfg, cls = GRPOConfig(loss_type=s["loss_type"], **rl), GRPOTrainer
        else:
            cfg, cls = RLOOConfig(**rl), RLOOTrainer
        trainer = cls(model=model, reward_funcs=reward, args=cfg, train_dataset=prompts, processing_class=tok)
    trainer.train()
    trainer.save_model(out)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"trl_version": trl.__version__, "steps": trainer.state.global_step, "first_loss": logs[0]["loss"],
            "first_log": {k: v for k, v in logs[0].items() if isinstance(v, int | float)}}


def _timed(cmd: list[str], env: dict, log: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit code) of a command in a fresh process, its output kept in `log`."""
    with open(log, "w") as f:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    return round(wall, 1), round(usage.ru_maxrss / 1024, 1), proc.returncode


def _alignkit_cmd(name: str, job: dict, out: str) -> list[str]:
    s, name = WHOLE[name], kind(name)
    common = ["--model", job["model"], "--output-dir", out, "--learning-rate", str(s["lr"]), "--warmup-ratio",
              str(s["warmup_ratio"]), "--seed", str(s["seed"]), "--no-progress", "--eval-fraction", "0",
              "--lr-scheduler", "linear"]
    if job.get("device") == "cuda":
        common += ["--mixed-precision", "bf16"]
    cmd = [sys.executable, "-m", "alignkit.cli.main", name, *common]
    if name in ("dpo", "rm", "kto"):  # DPO, KTO: reference log-probs precomputed (alignkit's default), cold cache
        cmd += ["--data", job["kto" if name == "kto" else "pairs"], "--batch-size", str(s["batch"]), "--epochs",
                str(s["epochs"]), "--max-length", str(s["max_length"])]
        if name != "rm":
            cmd += ["--beta", str(s["beta"])]
        if name == "kto":
            cmd += ["--desirable-weight", "1", "--undesirable-weight", "1"]
        return cmd
    cmd += ["--prompts", job["prompts"], "--reward", f"{job['reward']}:score", "--max-steps", str(s["steps"]),
            "--batch-size", str(s["prompts_per_step"]), "--mini-batch-size", str(s["prompts_per_step"] * s["k"]),
            "--max-new-tokens", str(s["max_new_tokens"]), "--temperature", str(s["temperature"]), "--beta",
            str(s["beta"]), "--eval-samples", "0"]
    if name == "rloo":
        return cmd + ["--k", str(s["k"])]
    # β 0: TRL loads no reference model, so neither side computes one
    return cmd + ["--num-generations", str(s["k"]), "--loss-type", s["loss_type"], "--reference", "none"]


def _first_loss(out: str) -> dict:
    lines = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    first = next(m for m in lines if m["split"] == "train")
    return {"steps": lines[-1]["step"], "first_loss": first["loss"],
            "first_log": {k: v for k, v in first.items() if isinstance(v, int | float) and k != "step"}}


def whole_process(name: str, python: str, job: dict, work: Path, repeats: int, env: dict) -> dict:
    if name.startswith("smol-"):
        job = {**job, **job["smol"]}
    runs = []
    for i in range(repeats):
        pair = {}
        for side in ("alignkit", "trl"):
            out = str(work / f"{name}-{side}-{i}")
            log = work / f"{name}-{side}-{i}.log"
            if side == "alignkit":
                cache = work / f"cache-{i}"  # cold: nothing cached from an earlier run
                wall, rss, rc = _timed(_alignkit_cmd(name, job, out), {**env, "ALIGNKIT_CACHE": str(cache)}, log)
                extra = _first_loss(out) if rc == 0 else {}
            else:
                side_job = work / f"{name}-job-{i}.json"
                side_job.write_text(json.dumps({**job, "out": out}))
                wall, rss, rc = _timed([python, __file__, "--setting", name, "--run-trl-whole", str(side_job)], env, log)
                lines = [ln for ln in log.read_text().splitlines() if ln.startswith("{")]
                extra = json.loads(lines[-1]) if rc == 0 and lines else {}
            if rc != 0:
                extra = {"error": log.read_text().strip().splitlines()[-3:]}
            pair[side] = {"wall_s": wall, "peak_rss_mb": rss, **extra}
        if "error" not in pair["alignkit"] and "error" not in pair["trl"]:
            pair["speedup"] = round(pair["trl"]["wall_s"] / pair["alignkit"]["wall_s"], 2)
        runs.append(pair)
        # each pair as it ends, on stderr (a long setting stopped early keeps what it measured)
        print(json.dumps({"setting": name, "pair": i, **pair}), file=sys.stderr, flush=True)
    speedups = [r["speedup"] for r in runs if "speedup" in r]
    return {"benchmark": "whole-process", "setting": name, **WHOLE[name], "device": job.get("device", "cpu"),
            **({"weights": job["weights"]} if "weights" in job else {}), "runs": runs,
            "speedup_median": statistics.median(speedups) if speedups else None,
            "loadavg_1m": round(os.getloadavg()[0], 2)}


# ---- alignkit side: prepares the data and the model, runs each setting in the TRL interpreter ----------------
def trl_missing(python: str) -> str | None:
    if not shutil.which(python):
        return f"no TRL interpreter at {python}"
    r = subprocess.run([python, "-c", "import trl; print(trl.__version__)"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"trl is not importable by {python}: " + " ".join(r.stderr.strip().splitlines()[-1:])
    return None


def prepare(work: Path, smol: bool = False, data: Path | None = None, smol_model: str | None = None) -> dict:
    from common import make_pairs, tiny_gpt2
    from rl import BAD, GOOD, REWARD_PY

    pairs = make_pairs(512, 0, 4, 120)  # as train.py's tiny settings
    (work / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    kto = [{"prompt": p["prompt"], "completion": p["chosen"] if i % 2 == 0 else p["rejected"], "label": i % 2 == 0}
           for i, p in enumerate(pairs)]
    (work / "kto.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kto))
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in pairs))
    (work / "words.py").write_text(REWARD_PY)
    job = {"pairs": str(work / "pairs.jsonl"), "model": tiny_gpt2(work / "model", pairs), "out": str(work / "out"),
           "good": GOOD, "bad": BAD, "kto": str(work / "kto.jsonl"), "prompts": str(work / "prompts.jsonl"),
           "reward": str(work / "words.py")}
    if smol:
        job["smol"] = prepare_smol(work / "smol", data, smol_model)
    return job


def prepare_smol(work: Path, data: Path, model: str | None) -> dict:
    """The SmolLM2 settings' data: the first SMOL["pairs"] HH-RLHF harmless-base test pairs whose prompt and both
    responses are each at most SMOL["cut_tokens"] tokens (so max_length 512 truncates nothing on either side), as
    plain-text prompt/chosen/rejected records; the prompts alone for RLOO. The model: the built-in SmolLM2 as the
    Hugging Face folder alignkit converts it to, or `model`, a folder; a folder with a config and tokenizer but no
    weights (benchmarks/gpu.sh carries one) gets SmolLM2's architecture with random weights (seed 0), saved once,
    which costs the same compute per step."""
    from alignkit.data import load_pairs
    from alignkit.data.records import response_text
    from alignkit.models.load import load_tokenizer, resolve_model

    model = model or resolve_model(SMOL["model"])  # converts the built-in GGUF into the cache once
    tok = load_tokenizer(model)
    weights = "pretrained"
    if not any(Path(model).glob("*.safetensors")) and not any(Path(model).glob("*.bin")):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(0)
        net = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model), dtype=torch.float32)
        model, weights = str(work / "model"), "random (seed 0)"
        net.save_pretrained(model)
        tok.save_pretrained(model)
    # pairs whose two transcripts hold different prompts are left out
    hh, _ = load_pairs(str(data / "hh-rlhf" / "harmless-base-test.jsonl.gz"), format="hh", hh_mismatch="drop")
    pairs = []
    for pair in hh:
        p = {"prompt": pair.prompt, "chosen": response_text(pair.chosen), "rejected": response_text(pair.rejected)}
        if not p["chosen"].strip() or not p["rejected"].strip():  # the reader keeps whitespace-only responses
            continue
        if max(len(tok(t).input_ids) for t in p.values()) <= SMOL["cut_tokens"]:
            pairs.append(p)
        if len(pairs) == SMOL["pairs"]:
            break
    work.mkdir(parents=True, exist_ok=True)
    (work / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in pairs))
    return {"model": model, "weights": weights, "pairs": str(work / "pairs.jsonl"),
            "prompts": str(work / "prompts.jsonl")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=[*SETTINGS, *WHOLE], help="run one setting")
    ap.add_argument("--whole-process", action="store_true", help=f"the whole-process settings ({', '.join(WHOLE)})")
    ap.add_argument("--repeats", type=int, default=3, help="whole process: alternating alignkit/TRL runs")
    ap.add_argument("--run-trl-whole", metavar="JOB_JSON", help=argparse.SUPPRESS)  # internal
    ap.add_argument("--python", default=DEFAULT_PYTHON, help=f"interpreter of the TRL venv (default {DEFAULT_PYTHON})")
    ap.add_argument("--run-trl", metavar="JOB_JSON", help=argparse.SUPPRESS)  # internal: the TRL-side runner
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="whole process: cpu (float32) or cuda (bf16 autocast on both sides)")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                    help="the shared data folder (HH-RLHF for the smol-* settings; default ../shared/data)")
    ap.add_argument("--smol-model", help="smol-* settings: a model folder instead of the built-in SmolLM2; one "
                    "without weights files gets random weights of its architecture")
    args = ap.parse_args()
    if args.run_trl:
        print(json.dumps(run_trl(args.setting, json.loads(Path(args.run_trl).read_text()))), flush=True)
        return
    if args.run_trl_whole:
        print(json.dumps(run_trl_whole(args.setting, json.loads(Path(args.run_trl_whole).read_text()))), flush=True)
        return
    whole = args.whole_process or args.setting in WHOLE
    names = [args.setting] if args.setting else list(WHOLE if whole else SETTINGS)
    reason = trl_missing(args.python)
    if reason:
        for name in names:
            print(json.dumps({"setting": name, "skipped": reason}), flush=True)
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        job = Path(tmp) / "job.json"
        smol = any(n.startswith("smol-") for n in names)
        job.write_text(json.dumps({**prepare(Path(tmp), smol, args.data, args.smol_model), "device": args.device}))
        if whole:
            for name in names:
                print(json.dumps(whole_process(name, args.python, json.loads(job.read_text()), Path(tmp), args.repeats,
                                               env)), flush=True)
            return
        for name in names:
            r = subprocess.run([args.python, __file__, "--setting", name, "--run-trl", str(job)], capture_output=True,
                               text=True, env=env)
            lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
            print(lines[-1] if lines else json.dumps({"setting": name, "error": r.stderr.strip().splitlines()[-3:]}),
                  flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
