"""The one training loop every offline method runs through (accelerate underneath).

A method hands the loop a `Task`: a model, tokenised items, a collator and a loss function returning
`(loss, metrics)`. Online methods (PPO, RLOO) also give an `experience` function that turns a batch of prompts
into minibatches (sampling, scoring, advantages) that the loop then optimises on; one step is then one
rollout batch. The loop owns everything else: data order, gradient accumulation, warm-up and schedule,
clipping, evaluation, progress, `metrics.jsonl` and the trackers of `--report-to`, checkpoints (Hugging Face
folder + training state, written to a temporary folder then renamed), exact resume (model, optimizer, scheduler,
RNG, data position) and the final model with its model card (`README.md`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from alignkit.train.card import write_card
from alignkit.train.checkpoints import CHECKPOINT_NAME, latest_checkpoint, resume_checkpoint  # noqa: F401 (callers)
from alignkit.train.config import RunConfig, save_config
from alignkit.train.trackers import Tracker, finish_trackers, start_trackers

LossFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class Task:
    """What a method gives the loop."""

    name: str
    model: torch.nn.Module
    train_items: list[dict]
    eval_items: list[dict]
    collate: Callable[[list[dict]], dict]
    loss: LossFn
    save: Callable[[torch.nn.Module, Path], None]
    info: dict = field(default_factory=dict)  # data/truncation counts, written to run_info.json
    before_save: Callable[[torch.nn.Module], None] | None = None  # e.g. reward normalisation at the end
    # online methods: experience(model, batch) -> (minibatches, metrics); `updates_per_step` minibatches each
    experience: Callable[[torch.nn.Module, dict], tuple[list[dict], dict]] | None = None
    updates_per_step: int = 1
    eval_fn: Callable[[torch.nn.Module], dict] | None = None  # replaces loss-based evaluation
    state: dict = field(default_factory=dict)  # method state saved in checkpoints (e.g. adaptive KL β)


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    train: dict  # last logged training metrics
    eval: dict  # last evaluation metrics (empty without held-out data)
    first_eval: dict  # evaluation before the first step (empty without held-out data)


def _sized(collate):
    def wrapped(items):
        batch = collate(items)
        batch["n"] = len(items)
        return batch

    return wrapped


def _loader(items: list[dict], batch_size: int, collate, *, seed: int | None) -> DataLoader:
    gen = None
    if seed is not None:
        gen = torch.Generator()
        gen.manual_seed(seed)
    return DataLoader(items, batch_size=batch_size, shuffle=seed is not None, generator=gen, collate_fn=_sized(collate))


class Window:
    """Metrics of the micro-batches since the last log, kept where they were computed (a GPU is not made to wait
    for each one) and read back in one transfer by `read`."""

    def __init__(self):
        self.entries: list[tuple[dict, int, torch.Tensor | None]] = []  # (metrics, examples, tokens) per micro-batch

    def add(self, metrics: dict, batch: dict) -> None:
        """A micro-batch's metrics, and its examples and tokens for the throughput."""
        values = {k: v.detach().float().mean() if torch.is_tensor(v) else torch.tensor(float(v))
                  for k, v in metrics.items()}
        tokens = batch["attention_mask"].sum() if "attention_mask" in batch else None
        self.entries.append((values, batch["n"], tokens))

    def drop(self, count: int) -> None:
        """Forget the last `count` micro-batches (a skipped optimizer step's)."""
        del self.entries[len(self.entries) - count :]

    @property
    def examples(self) -> int:
        return sum(n for _, n, _ in self.entries)

    def read(self) -> tuple[dict[str, float], int]:
        """Per name the mean weighted by examples, and the tokens counted; in one transfer from the device."""
        flat = [v for m, _, _ in self.entries for v in m.values()]
        flat += [t for _, _, t in self.entries if t is not None]
        read = iter(torch.stack([v.to(flat[0].device).float() for v in flat]).tolist() if flat else [])
        sums: dict[str, list[float]] = {}
        for m, n, _ in self.entries:
            for k in m:
                total = sums.setdefault(k, [0.0, 0])
                total[0] += next(read) * n
                total[1] += n
        return {k: a / max(b, 1) for k, (a, b) in sums.items()}, int(sum(read))

    def counts(self) -> dict[str, int]:
        """Examples per metric name."""
        out: dict[str, int] = {}
        for m, n, _ in self.entries:
            for k in m:
                out[k] = out.get(k, 0) + n
        return out



def evaluate(task: Task, model, accelerator, batch_size: int, progress: bool = False) -> dict[str, float]:
    """Weighted means of the loss and metrics over the held-out items (no gradient, eval mode)."""
    if task.eval_fn is not None:
        with accelerator.autocast():
            return task.eval_fn(accelerator.unwrap_model(model))
    if not task.eval_items:
        return {}
    from accelerate.utils import send_to_device
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    acc = Window()
    # each process scores its own share of the items, none twice (a prepared loader would repeat items to even
    # out the shares, and the repeats would weigh in the mean); with fewer items than processes, every process
    # scores them all and keeps its own result
    world = accelerator.num_processes
    shard = world > 1 and len(task.eval_items) >= world
    items = task.eval_items[accelerator.process_index :: world] if shard else task.eval_items
    with torch.no_grad(), accelerator.autocast():
        for batch in tqdm(_loader(items, batch_size, task.collate, seed=None), desc="eval", leave=False,
                          disable=not progress):
            loss, metrics = task.loss(model, send_to_device(batch, accelerator.device))
            acc.add({"loss": loss, **metrics}, batch)
    model.train(was_training)
    means, _ = acc.read()
    if not shard:
        return means
    keys = sorted(means)  # every process has the same keys: weighted sums and counts, summed over processes
    counts = acc.counts()
    sums = torch.tensor([[means[k] * counts[k], counts[k]] for k in keys], dtype=torch.float64,
                        device=accelerator.device)
    sums = accelerator.reduce(sums, "sum")
    return {k: float(a / max(b, 1)) for k, (a, b) in zip(keys, sums.tolist(), strict=True)}


class MetricsLog:
    """`metrics.jsonl` (one JSON object per line) and the trackers of `--report-to` (`train.trackers`): each gets
    every numeric value of every line, as `<split>/<name>` at the line's step. Main process only (`enabled`)."""

    def __init__(self, out: Path, *, resume_step: int | None, enabled: bool, trackers: list[Tracker]):
        self.path = out / "metrics.jsonl"
        self.enabled = enabled
        self.trackers = trackers
        if not enabled:
            return
        if resume_step is not None and self.path.exists():  # drop lines written after the checkpoint
            keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        elif resume_step is None and self.path.exists():
            self.path.unlink()

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.trackers:
            values = {f"{record['split']}/{k}": float(v) for k, v in record.items()
                      if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}
            for tracker in self.trackers:
                tracker.log(values, record["step"])


def _save_checkpoint(accelerator, task: Task, model, out: Path, state: dict, keep: int) -> None:
    final = out / f"checkpoint-{state['step']}"
    tmp = out / f".checkpoint-{state['step']}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "state"))
    if accelerator.is_main_process:
        task.save(accelerator.unwrap_model(model), tmp)
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "task_state": task.state}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # a checkpoint is complete or absent, never half-written
        done = sorted((int(m.group(1)), p) for p in out.iterdir() if (m := CHECKPOINT_NAME.match(p.name)))
        for _, old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _non_finite(cfg: RunConfig, out: Path, batch: dict, step: int, what: str, main: bool,
                params: list[torch.nn.Parameter]) -> None:
    """A non-finite loss or gradient: the micro-batch is saved for inspection; the run stops (the last checkpoint
    stays as it is) unless --skip-nonfinite, which skips the step: what was accumulated is dropped."""
    from alignkit.errors import AlignkitError

    path = out / f"nonfinite-step-{step}.pt"
    if main:
        torch.save({k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in batch.items()}, path)
    if not cfg.skip_nonfinite:
        raise AlignkitError(f"non-finite {what} at step {step}; the offending batch is saved in {path} (token ids). "
                            "The last checkpoint is kept. Lower --learning-rate, check the data, or pass "
                            "--skip-nonfinite to skip such steps.")
    print(f"skipping step {step}: non-finite {what}; batch saved in {path}", flush=True)
    for p in params:
        p.grad = None


class Stepper:
    """One micro-batch's forward and backward, and at the end of an accumulation the optimizer step behind its
    guards: gradients averaged over processes (`_average_gradients`, when the model is not wrapped), their norm
    clipped, and a non-finite loss or gradient norm handled (`_non_finite`). The losses' finiteness and the norm
    are read back once per optimizer step, not per micro-batch."""

    def __init__(self, cfg: RunConfig, out: Path, accelerator, optimizer, scheduler, params, manual_sync: bool,
                 main: bool):
        self.cfg, self.out, self.accelerator, self.main = cfg, out, accelerator, main
        self.optimizer, self.scheduler, self.params, self.manual_sync = optimizer, scheduler, params, manual_sync
        self.grad_norm: float | None = None  # of the last optimizer step
        self.pending: list[tuple[torch.Tensor, dict]] = []  # (loss, micro-batch) since the last optimizer step

    def run(self, task: Task, model, minibatches: list[dict], window: Window, step: int) -> int:
        """Forward and backward on each minibatch, an optimizer step at the end of each accumulation; returns the
        optimizer steps skipped (their metrics are dropped from `window` too)."""
        skipped = 0
        for mb in minibatches:
            with self.accelerator.accumulate(model):
                loss, metrics = self.forward_backward(task, model, mb)
                window.add({"loss": loss, **metrics}, mb)
                self.pending.append((loss, mb))
                if self.accelerator.sync_gradients:
                    if not self.step(step):
                        skipped += 1
                        window.drop(len(self.pending))
                    self.pending = []
        return skipped

    def forward_backward(self, task: Task, model, mb: dict):
        # explicit autocast (--mixed-precision): the log-prob code runs the backbone and head itself, so the
        # autocast accelerate puts around the prepared model's forward would never apply
        with self.accelerator.autocast():
            loss, metrics = task.loss(model, mb)
        self.accelerator.backward(loss)
        return loss.detach(), metrics

    def step(self, step: int) -> bool:
        """The optimizer step over the gradients accumulated from `self.pending` (loss, micro-batch); False when it
        was skipped for a non-finite loss or gradient (--skip-nonfinite; otherwise the run stops)."""
        acc, world, pending = self.accelerator, self.accelerator.num_processes, self.pending
        if self.manual_sync:
            _average_gradients(self.params, world)
        # the norm is computed (and checked) even without clipping
        norm = acc.clip_grad_norm_(self.params, self.cfg.max_grad_norm or float("inf"))
        finite = torch.stack([torch.isfinite(loss) for loss, _ in pending] + [torch.isfinite(norm)]).float()
        if world > 1:  # all processes skip or stop together
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        *flags, self.grad_norm = torch.cat([finite, norm.detach().float().reshape(1)]).tolist()  # one read
        bad = next((i for i, ok in enumerate(flags[:-1]) if not ok), None)
        if bad is not None or not flags[-1]:
            loss, mb = pending[bad if bad is not None else -1]
            what = f"loss ({float(loss)})" if bad is not None else f"gradient norm ({self.grad_norm})"
            _non_finite(self.cfg, self.out, mb, step, what, self.main, self.params)
            self.grad_norm = None
            return False
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True


def _average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Average the gradients over all processes in one all-reduce (a parameter without a gradient counts 0)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _step_metrics(accelerator, step_metrics: dict, window: Window, busy: float, skipped: int) -> tuple[dict, list[float]]:
    """A step's training metrics (the method's, then the window's means; over processes, their mean) and its
    throughput in tokens and examples per second of optimisation (over processes, their sum). A name in both the
    experience's metrics and the step function's is a method's bug (one would hide the other): refused."""
    means, tokens = window.read()
    clash = sorted(step_metrics.keys() & means.keys())
    if clash:
        raise ValueError(f"metric name(s) {clash} come from both the rollout and the loss step; rename one")
    metrics = {**step_metrics, **means}
    speed = [tokens / max(busy, 1e-9), window.examples / max(busy, 1e-9)]
    if accelerator.num_processes > 1:
        metrics, speed = _reduce_metrics(accelerator, metrics, speed)
    if skipped:
        metrics["skipped_steps"] = skipped
    return metrics, speed


def _reduce_metrics(accelerator, metrics: dict, speed: list[float]) -> tuple[dict, list[float]]:
    keys = sorted(k for k, v in metrics.items() if isinstance(v, int | float))
    means = accelerator.reduce(torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64,
                                            device=accelerator.device), "mean")
    sums = accelerator.reduce(torch.tensor(speed, dtype=torch.float64, device=accelerator.device), "sum")
    return {**metrics, **dict(zip(keys, means.tolist(), strict=True))}, sums.tolist()


def _load_checkpoint(accelerator, ckpt: Path) -> None:
    """Restore model, optimizer, scheduler and RNG states; a file that passed `checkpoints.damage` and still
    cannot be loaded (corrupt inside, or written for another model) ends the run with one line."""
    from alignkit.errors import AlignkitError

    try:
        accelerator.load_state(str(ckpt / "state"))
    except Exception as e:  # any failure to load is reported with the checkpoint's name
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise AlignkitError(f"cannot resume from {ckpt}: its state does not load ({type(e).__name__}: {first})") from e


def _follow_schedule(scheduler) -> float:
    """Set the optimizer's learning rate to the schedule's value at the restored step, and return it. The lr
    restored with the optimizer is the one of the schedule that wrote the checkpoint: when the run's length has
    changed since (a finished run extended with a larger --max-steps), that schedule may have ended at 0,
    while the scheduler itself (built for this run's length) takes over only after the next step."""
    sched = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper, or the LambdaLR itself
    lrs = [base * f(sched.last_epoch) for f, base in zip(sched.lr_lambdas, sched.base_lrs, strict=True)]
    for group, lr in zip(sched.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    sched._last_lr = lrs
    return lrs[0]


def _forget_other_precision(mixed_precision: str) -> None:
    """accelerate keeps one process-wide state and refuses an Accelerator with another mixed precision; a run in
    the same Python process as an earlier one with another precision (one process, nothing distributed) drops
    that state first instead of failing."""
    from accelerate.state import AcceleratorState, DistributedType

    st = AcceleratorState._shared_state
    if st and st.get("_mixed_precision") != mixed_precision and st.get("distributed_type") == DistributedType.NO:
        AcceleratorState._reset_state()


FAILED_MARK = "FAILED.txt"  # in an output folder: the run that last wrote there stopped on an error
_START_FILES = {"config.yaml", "run_info.json", "metrics.jsonl"}  # what a run writes before its first step


def _listing(out: Path) -> dict[str, int] | None:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir()} if out.is_dir() else None


def _after_failure(out: Path, before: dict[str, int] | None, error: BaseException) -> None:
    """A run stopped by an error (or an interrupt): a folder it created and that holds nothing of value (no step
    trained, no checkpoint, tracker log or saved batch) is removed, so it is as before the run; any other folder
    the run wrote to gets FAILED.txt, saying why (its checkpoints stay complete: resume with --resume)."""
    from accelerate import PartialState

    now = _listing(out)
    if now is None or now == before or not PartialState().is_main_process:
        return  # nothing written
    metrics = out / "metrics.jsonl"
    trained = metrics.is_file() and '"split": "train"' in metrics.read_text()
    if before is None and set(now) <= _START_FILES and not trained:
        shutil.rmtree(out, ignore_errors=True)
        return
    why = str(error).strip() or type(error).__name__
    (out / FAILED_MARK).write_text(f"this run stopped before it finished: {why}\n")


def train(task: Task, cfg: RunConfig) -> TrainResult:
    """Run the optimisation described by `cfg` on `task`; save the final model into `cfg.output_dir`, with its
    model card. The trackers of `--report-to` are finished whatever happens, so what they were sent is kept.
    A run that fails leaves its output folder as it was, or marked with FAILED.txt (`_after_failure`)."""
    trackers: list[Tracker] = []  # filled by _train (main process), once the run knows where it resumes
    out = Path(cfg.output_dir)
    before = _listing(out)
    try:
        result = _train(task, cfg, trackers)
    except BaseException as e:
        finish_trackers(trackers, ok=False)
        _after_failure(out, before, e)
        raise
    finish_trackers(trackers, ok=True)
    (out / FAILED_MARK).unlink(missing_ok=True)  # an earlier failed run's mark
    return result


def lr_factor(update: int, *, kind: str, warmup: int, total: int) -> float:
    """The learning rate's multiplier after `update` optimizer updates of `total`: a linear warm-up from 0 over the
    first `warmup`, then a linear decay to 0 at `total` (linear), half a cosine down to 0 (cosine), or 1 (constant).
    The schedules of transformers' `get_scheduler` (linear, cosine, constant_with_warmup), which the run does not
    import for this: `transformers.optimization` brings `trainer_utils` and peft with it."""
    if update < warmup:
        return update / max(1, warmup)
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return max(0.0, (total - update) / max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * (update - warmup) / max(1, total - warmup))))


def _prepare(task: Task, cfg: RunConfig, accelerator):
    """The model, AdamW and the learning-rate schedule, prepared for this run's processes; the trainable
    parameters; whether gradients are averaged by hand; and the plan: optimizer steps in all (`total`) and
    micro-batches per epoch."""
    from accelerate import DistributedType

    model = task.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # the fused kernel (CPU and CUDA) updates each tensor in one pass instead of a loop of small kernels
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused)
    world = accelerator.num_processes  # each process takes --batch-size examples per micro-batch
    micro_per_epoch = math.ceil(len(task.train_items) / (cfg.batch_size * world))
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.gradient_accumulation_steps)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    updates = total * task.updates_per_step
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        lr_factor, kind=cfg.lr_scheduler, warmup=round(cfg.warmup_ratio * updates), total=updates))
    # Several processes with one full copy of the model each (DDP on CPU or GPUs): the model is NOT wrapped;
    # gradients are averaged over processes after each backward pass (`_average_gradients`), because the
    # log-prob code runs the backbone and the head itself, which a DDP wrapper's forward hooks would not see.
    manual_sync = world > 1 and accelerator.distributed_type in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    if manual_sync:
        model.to(accelerator.device)
        optimizer = accelerator.prepare(optimizer)
        accelerator.register_for_checkpointing(model)
        accelerator.register_for_checkpointing(scheduler)  # not prepared: stepped once per optimizer step
    else:
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return model, optimizer, scheduler, params, manual_sync, {"total": total, "micro_per_epoch": micro_per_epoch}


def _resume(accelerator, ckpt: Path, damaged: list[str], task: Task, scheduler, cfg: RunConfig, total: int,
            main: bool) -> dict:
    """Restore a checkpoint (model, optimizer, scheduler, RNG, the method's state); returns the loop's state."""
    if main:
        for why in damaged:
            print(f"skipping a damaged checkpoint: {why}")
    _load_checkpoint(accelerator, ckpt)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    task.state.update(state.pop("task_state", {}))
    planned = state.pop("total", None)  # the steps of the run that wrote the checkpoint (older ones: absent)
    lr = _follow_schedule(scheduler)
    if main:
        print(f"resuming from {ckpt} (step {state['step']})")
        if isinstance(planned, int) and planned != total:
            print(f"the run now has {total} steps, not {planned}: the {cfg.lr_scheduler} learning-rate "
                  f"schedule is rebuilt for {total} steps and continues at lr {lr:.3g}")
    return state


def _train(task: Task, cfg: RunConfig, trackers: list[Tracker]) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from alignkit.models.load import resolve_precision

    out = Path(cfg.output_dir)
    # checked before anything is written: the newest intact checkpoint, and the damaged newer ones it replaces
    ckpt, damaged = resume_checkpoint(out) if cfg.resume else (None, [])
    precision = resolve_precision(cfg.mixed_precision)
    _forget_other_precision(precision)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              mixed_precision=precision, cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    set_seed(cfg.seed)
    if cfg.mixed_precision == "auto":  # what auto chose on this machine, in run_info.json
        task.info["mixed_precision"] = precision
    if main:
        _write_run_files(task, cfg, out)

    model, optimizer, scheduler, params, manual_sync, plan = _prepare(task, cfg, accelerator)
    total, micro_per_epoch = plan["total"], plan["micro_per_epoch"]
    state, resume_step = {"step": 0, "epoch": 0, "micro_in_epoch": 0}, None
    if ckpt is not None:
        state = _resume(accelerator, ckpt, damaged, task, scheduler, cfg, total, main)
        resume_step = state["step"]
    state["total"] = total
    log = MetricsLog(out, resume_step=resume_step, enabled=main, trackers=trackers)
    if main:
        trackers += start_trackers(cfg.report_to, out.resolve().name, {"method": task.name, **cfg.model_dump()}, out,
                                   resume_step=resume_step)
    eval_bs = cfg.eval_batch_size or cfg.batch_size

    first_eval: dict = {}
    if resume_step is None and (task.eval_items or task.eval_fn):
        first_eval = evaluate(task, model, accelerator, eval_bs, cfg.progress and main)
        log.write({"split": "eval", "step": 0, **first_eval})
    last_train: dict = {}
    last_eval: dict = first_eval

    bar = tqdm(total=total, initial=state["step"], desc=task.name, disable=not (cfg.progress and main), dynamic_ncols=True)
    t_start = time.perf_counter()
    window = Window()
    busy = 0.0  # seconds spent in optimisation (sampling excluded)
    skipped = 0  # steps skipped for a non-finite loss or gradient (--skip-nonfinite)
    stepper = Stepper(cfg, out, accelerator, optimizer, scheduler, params, manual_sync, main)
    while state["step"] < total:
        loader = accelerator.prepare(_loader(task.train_items, cfg.batch_size, task.collate, seed=cfg.seed + state["epoch"]))
        if state["micro_in_epoch"]:
            loader = accelerator.skip_first_batches(loader, state["micro_in_epoch"])
        accelerator.step = 0
        for batch in loader:
            minibatches, step_metrics = [batch], {}
            if task.experience is not None:
                with accelerator.autocast():
                    minibatches, step_metrics = task.experience(accelerator.unwrap_model(model), batch)
            t_busy = time.perf_counter()
            skipped += stepper.run(task, model, minibatches, window, state["step"] + 1)
            busy += time.perf_counter() - t_busy
            state["micro_in_epoch"] += 1
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            last_train, speed = _step_metrics(accelerator, step_metrics, window, busy, skipped)
            log.write({"split": "train", "step": state["step"],
                       "epoch": state["epoch"] + state["micro_in_epoch"] / micro_per_epoch, **last_train,
                       "lr": scheduler.get_last_lr()[0], "grad_norm": stepper.grad_norm,
                       "tokens_per_s": speed[0], "examples_per_s": speed[1], "elapsed_s": time.perf_counter() - t_start})
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in last_train.items() if k in ("loss", "accuracy", "reward", "kl")})
            window, busy = Window(), 0.0
            if cfg.eval_every and state["step"] % cfg.eval_every == 0 and state["step"] < total:
                last_eval = evaluate(task, model, accelerator, eval_bs)
                log.write({"split": "eval", "step": state["step"], **last_eval})
            if cfg.save_every and state["step"] % cfg.save_every == 0 and state["step"] < total:
                _save_checkpoint(accelerator, task, model, out, state, cfg.keep_checkpoints)
            if state["step"] >= total:
                break
        else:
            state["epoch"] += 1
            state["micro_in_epoch"] = 0
    bar.close()

    if (task.eval_items or task.eval_fn) and (resume_step is None or resume_step < total):
        last_eval = evaluate(task, model, accelerator, eval_bs)
        log.write({"split": "eval", "step": state["step"], **last_eval})
    result = TrainResult(out, state["step"], last_train, last_eval, first_eval)
    _finish(task, cfg, accelerator, model, state, result)
    return result


def _write_run_files(task: Task, cfg: RunConfig, out: Path) -> None:
    """config.yaml and run_info.json, written before training starts."""
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml", method=task.name)
    task.info["records"] = {"train": len(task.train_items), "eval": len(task.eval_items)}
    (out / "run_info.json").write_text(json.dumps(task.info, indent=2))


def _finish(task: Task, cfg: RunConfig, accelerator, model, state: dict, result: TrainResult) -> None:
    """The method's last pass (`before_save`), a last checkpoint when checkpointing, the model and its card."""
    final_model = accelerator.unwrap_model(model)
    if task.before_save is not None:
        with accelerator.autocast():  # in the precision the run trained and evaluated in
            task.before_save(final_model)
    if cfg.save_every:
        _save_checkpoint(accelerator, task, model, result.output_dir, state, cfg.keep_checkpoints)
    if accelerator.is_main_process:
        task.save(final_model, result.output_dir)
        write_card(result.output_dir, task.name, cfg, task.info, result)
    accelerator.wait_for_everyone()
