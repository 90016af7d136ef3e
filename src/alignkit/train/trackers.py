"""Experiment trackers for `--report-to`: TensorBoard, Weights & Biases, MLflow.

A tracker gets exactly the numeric metrics that go into `metrics.jsonl`, named `train/<metric>` and
`eval/<metric>`, at the run's optimizer step, and the resolved config (what `config.yaml` holds) once at the
start. Only the main process of a run has trackers (`loop.MetricsLog`). Each tracker's package is imported when a
run starts it; checking the config only asks whether the package is installed (`missing`), so the CLI stays fast.

- tensorboard: event files in `<output_dir>/tensorboard`; the config as a text entry.
- wandb: project `$WANDB_PROJECT` (default `alignkit`), run name `$WANDB_NAME` (default the output folder's name),
  files under `$WANDB_DIR` (default the output folder); `WANDB_MODE=offline` keeps it all local.
- mlflow: the store `$MLFLOW_TRACKING_URI` (MLflow's default: `sqlite:///mlflow.db` in the working folder),
  experiment `$MLFLOW_EXPERIMENT_NAME` (default `alignkit`), the config as params (nested keys joined by dots,
  values cut to MLflow's length limit).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

# tracker name -> (module whose presence is checked, the alignkit extra that installs it)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
TRACKERS = tuple(PACKAGES)


def missing(name: str) -> str | None:
    """Why tracker `name` cannot run here (its package is not installed), or None. Nothing is imported."""
    module, extra = PACKAGES[name]
    if importlib.util.find_spec(module) is None:
        return f"--report-to {name}: the {module} package is not installed (pip install 'alignkit[{extra}]')"
    return None


class Tracker:
    """One experiment tracker: `start` once, `log` per metrics record, `finish` once (also when the run fails)."""

    name = ""

    def start(self, run_name: str, config: dict, output_dir: Path, *, resume_step: int | None = None) -> None:
        raise NotImplementedError

    def log(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def finish(self, ok: bool = True) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def start(self, run_name, config, output_dir, *, resume_step=None):
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        # resumed: events past the checkpoint (written before a crash) are hidden, as metrics.jsonl drops them
        purge = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=purge)
        text = yaml.safe_dump(config, sort_keys=False)
        self.writer.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()), 0)

    def log(self, metrics, step):
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def finish(self, ok=True):
        self.writer.close()


class WandbTracker(Tracker):
    name = "wandb"

    def start(self, run_name, config, output_dir, *, resume_step=None):
        import wandb

        env = os.environ
        self.run = wandb.init(project=env.get("WANDB_PROJECT") or "alignkit", name=env.get("WANDB_NAME") or run_name,
                              dir=env.get("WANDB_DIR") or str(output_dir), config=config)

    def log(self, metrics, step):
        self.run.log(metrics, step=step)

    def finish(self, ok=True):
        self.run.finish(exit_code=0 if ok else 1)


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """Nested settings as one level, keys joined by dots."""
    out: dict[str, object] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class MLflowTracker(Tracker):
    name = "mlflow"

    def start(self, run_name, config, output_dir, *, resume_step=None):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        try:
            from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH as limit
        except ImportError:  # moved or renamed: the smallest limit MLflow ever had
            limit = 250
        self.client = MlflowClient()  # $MLFLOW_TRACKING_URI, else MLflow's default store
        experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
        if not experiment_id:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "alignkit"
            found = self.client.get_experiment_by_name(name)
            experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id

        def value(v) -> str:
            s = str(v)
            return s if len(s) <= limit else s[: limit - 3] + "..."

        params = [Param(k, value(v)) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, metrics, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, ok=True):
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


CLASSES = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MLflowTracker}


def start_trackers(report_to: str, run_name: str, config: dict, output_dir: Path, *,
                   resume_step: int | None = None) -> list[Tracker]:
    """Start the trackers named in `report_to` ("none" or a comma list). One that fails to start ends those
    already started and raises AlignkitError naming it."""
    from alignkit.errors import AlignkitError

    started: list[Tracker] = []
    for name in report_to.split(","):
        if name == "none":
            continue
        tracker = CLASSES[name]()
        try:
            tracker.start(run_name, config, output_dir, resume_step=resume_step)
        except Exception as e:
            finish_trackers(started, ok=False)
            first = (str(e).strip().splitlines() or [""])[0]
            raise AlignkitError(f"--report-to {name}: could not start: {type(e).__name__}: {first}") from e
        started.append(tracker)
    return started


def finish_trackers(trackers: list[Tracker], *, ok: bool) -> None:
    """Finish every tracker; one that fails is reported on stderr and does not stop the others (the run's own
    outcome, and what it wrote, stand)."""
    for tracker in trackers:
        try:
            tracker.finish(ok)
        except Exception as e:
            print(f"warning: --report-to {tracker.name}: finishing failed: {type(e).__name__}: {e}", file=sys.stderr,
                  flush=True)
