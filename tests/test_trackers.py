"""`--report-to`: each tracker gets exactly the numeric values of `metrics.jsonl` (train/ and eval/ at each step)
and the resolved config, read back here from the tracker's own storage; nothing leaves the machine (wandb offline,
MLflow on a local SQLite file). Also: a failed run still finishes its trackers, and bad `--report-to` values end
with one line and exit 2 before anything is loaded.

The tracker packages come with `scripts/setup.sh` (`pip install -e '.[test,tensorboard,wandb,mlflow]'`)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from conftest import REPO, synthetic_pairs, write_jsonl

FAST = dict(batch_size=8, progress=False, warmup_ratio=0.0, seed=0, max_steps=3, eval_every=1)
REL = 1e-6  # float32 values round-tripped through float64 (TensorBoard stores float32)


@pytest.fixture
def tracker_env(monkeypatch, tmp_path):
    """Trackers kept local and to this test: wandb offline, MLflow in a SQLite file; no user settings leak in."""
    for var in ("WANDB_DIR", "WANDB_NAME", "WANDB_PROJECT", "WANDB_ENTITY", "MLFLOW_EXPERIMENT_NAME",
                "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def _data(tmp_path: Path) -> str:
    return write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(48, 1))


def expected(out: Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl as tracker series: name -> {step: value} for every numeric value of every line."""
    series: dict[str, dict[int, float]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for k, v in rec.items():
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                series.setdefault(f"{rec['split']}/{k}", {})[rec["step"]] = float(v)
    assert {k.split("/")[0] for k in series} == {"train", "eval"}
    return series


def same(got: dict[str, dict[int, float]], want: dict[str, dict[int, float]]) -> None:
    assert sorted(got) == sorted(want)
    for name, steps in want.items():
        assert sorted(got[name]) == sorted(steps), name
        for step, value in steps.items():
            assert got[name][step] == pytest.approx(value, rel=REL), (name, step)


# -- readers of each tracker's own storage -------------------------------------------------------------------


def read_tensorboard(folder: Path) -> tuple[dict, str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    series = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    return series, config


def wandb_records(path: Path) -> list:
    """The records of an offline run's `.wandb` file: the LevelDB log format (a 7-byte file header, 32 KiB
    blocks, chunks with a CRC-32 of type + data) holding `wandb_internal_pb2.Record` protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    block, pos, buf, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (kind == 0 and n == 0):  # block padding
            pos += left
            continue
        if pos + 7 + n > len(data):  # a chunk still being written
            break
        chunk = data[pos + 7 : pos + 7 + n]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"bad chunk at byte {pos}"
        pos += 7 + n
        buf += chunk
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def read_wandb(root: Path) -> tuple[dict, dict, object]:
    """The run's series, config and run record, once its file is complete. `run.finish()` returns when the run is
    over, but wandb's service process may write the file a moment later; the exit record comes last."""
    import time

    import wandb

    wandb.teardown()  # stops the service process, which closes the run's files
    (run_file,) = root.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 60
    records = wandb_records(run_file)
    while "exit" not in {r.WhichOneof("record_type") for r in records}:
        assert time.monotonic() < deadline, f"{run_file}: no exit record after 60 s"
        time.sleep(0.2)
        records = wandb_records(run_file)
    series: dict[str, dict[int, float]] = {}
    config, run = {}, None
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run = r.run
            config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            for item in r.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    series.setdefault(key, {})[r.history.step.num] = float(json.loads(item.value_json))
    return series, config, run


def read_mlflow(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    series = {k: {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)} for k in run.data.metrics}
    return series, run


# -- one real run per tracker, read back --------------------------------------------------------------------


def _run(tiny_model, tmp_path, report_to: str, name: str = "dpo-run"):
    from alignkit.train import DPOConfig, run_dpo

    out = tmp_path / name
    result = run_dpo(DPOConfig(model=tiny_model, data=_data(tmp_path), output_dir=str(out), eval_fraction=0.25,
                               report_to=report_to, **FAST))
    assert result.steps == 3
    return out


def test_tensorboard(tiny_model, tracker_env):
    out = _run(tiny_model, tracker_env, "tensorboard")
    series, config = read_tensorboard(out / "tensorboard")
    same(series, expected(out))
    assert "report_to: tensorboard" in config and "method: dpo" in config


def test_wandb(tiny_model, tracker_env, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "alignkit-tests")  # the user's project wins over the default
    out = _run(tiny_model, tracker_env, "wandb")
    series, config, run = read_wandb(out)  # WANDB_DIR unset: the run's files are in the output folder
    same(series, expected(out))
    assert run.display_name == "dpo-run" and run.project == "alignkit-tests"
    saved = {k: v for k, v in config.items() if not k.startswith("_")}
    import yaml

    assert saved == yaml.safe_load((out / "config.yaml").read_text())


def test_mlflow(tiny_model, tracker_env):
    out = _run(tiny_model, tracker_env, "mlflow")
    series, run = read_mlflow(f"sqlite:///{tracker_env / 'mlflow.db'}", "alignkit")
    same(series, expected(out))
    assert run.info.run_name == "dpo-run" and run.info.status == "FINISHED"
    assert run.data.params["method"] == "dpo" and run.data.params["report_to"] == "mlflow"
    assert run.data.params["max_steps"] == "3" and run.data.params["eval_data"] == "None"


def test_cli_sft_two_trackers(tiny_model, tracker_env, monkeypatch):
    """The flag through the real command line, two trackers at once, SFT, and MLFLOW_EXPERIMENT_NAME."""
    rows = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in synthetic_pairs(40, 3)]
    data = write_jsonl(tracker_env / "sft.jsonl", rows)
    out = tracker_env / "sft"
    env = {**_env(monkeypatch), "MLFLOW_EXPERIMENT_NAME": "sft-experiment"}
    r = subprocess.run([sys.executable, "-m", "alignkit.cli.main", "sft", "--model", tiny_model, "--data", data,
                        "--output-dir", str(out), "--max-steps", "3", "--eval-every", "2", "--batch-size", "8",
                        "--report-to", "mlflow, tensorboard", "--no-progress"],
                       capture_output=True, text=True, cwd=tracker_env, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    want = expected(out)
    same(read_tensorboard(out / "tensorboard")[0], want)
    series, run = read_mlflow(f"sqlite:///{tracker_env / 'mlflow.db'}", "sft-experiment")
    same(series, want)
    assert run.data.params["report_to"] == "mlflow,tensorboard" and run.data.params["method"] == "sft"


def _env(monkeypatch) -> dict:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


def test_failed_run_finishes_trackers(tiny_model, tracker_env):
    """A run that fails at step 3: the steps before are in the trackers, and the runs are closed (FAILED)."""
    from alignkit.train.config import DPOConfig
    from alignkit.train.loop import train
    from alignkit.train.preference import build_dpo

    out = tracker_env / "crash"
    cfg = DPOConfig(model=tiny_model, data=_data(tracker_env), output_dir=str(out), eval_fraction=0.25,
                    report_to="tensorboard,mlflow", **FAST)
    task = build_dpo(cfg)
    calls = {"n": 0}
    inner = task.loss

    def failing(model, batch):
        if model.training:
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("boom")
        return inner(model, batch)

    task.loss = failing
    with pytest.raises(RuntimeError, match="boom"):
        train(task, cfg)
    want = expected(out)
    assert max(want["train/loss"]) == 2
    same(read_tensorboard(out / "tensorboard")[0], want)
    series, run = read_mlflow(f"sqlite:///{tracker_env / 'mlflow.db'}", "alignkit")
    same(series, want)
    assert run.info.status == "FAILED"
    assert not (out / "README.md").exists()  # no model was saved, so no card


def test_mlflow_params_flattened_and_cut(tracker_env):
    """Nested settings become dotted keys; a value over MLflow's length limit is cut, not refused."""
    from mlflow.tracking import MlflowClient
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    from alignkit.train.trackers import MLflowTracker

    t = MLflowTracker()
    t.start("unit", {"long": "x" * (MAX_PARAM_VAL_LENGTH + 100), "nested": {"a": 1, "b": {"c": None}}}, tracker_env)
    t.log({"train/loss": 0.5}, 1)
    t.finish()
    run = MlflowClient().get_run(t.run_id)
    assert run.data.params["nested.a"] == "1" and run.data.params["nested.b.c"] == "None"
    long = run.data.params["long"]
    assert len(long) == MAX_PARAM_VAL_LENGTH and long.endswith("...")


# -- bad --report-to values: one line, exit 2, before any model or data is read -------------------------------


def _cli(tmp_path, *args, env=None):
    return subprocess.run([sys.executable, "-m", "alignkit.cli.main", "dpo", "--model", "no-such-model-folder",
                           "--data", "no-such-file.jsonl", "--output-dir", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, env=env, timeout=120)


def _one_line(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_unknown_tracker(tmp_path):
    line = _one_line(_cli(tmp_path, "--report-to", "tensorboard,comet"))
    assert "unknown tracker 'comet'" in line and "wandb" in line and "mlflow" in line  # the choices are listed
    line = _one_line(_cli(tmp_path, "--report-to", "none,wandb"))
    assert "'none' cannot be combined" in line
    assert not (tmp_path / "out").exists()


def test_missing_tracker_package(tmp_path, monkeypatch):
    """The package check uses find_spec (no import); simulated absent here, in this process and through the CLI."""
    import importlib.util

    from alignkit.errors import ConfigError
    from alignkit.train.config import DPOConfig, load_config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        load_config(DPOConfig, overrides={"model": "m", "data": "d.jsonl", "output_dir": str(tmp_path / "o"),
                                          "report_to": "tensorboard,wandb"})
    assert "--report-to wandb: the wandb package is not installed (pip install 'alignkit[wandb]')" in str(err.value)

    # the CLI in a subprocess, with a sitecustomize that hides mlflow from find_spec
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import importlib.util as u\n_real = u.find_spec\n"
        "u.find_spec = lambda name, *a, **k: None if name == 'mlflow' else _real(name, *a, **k)\n")
    env = {**_env(monkeypatch), "PYTHONPATH": f"{site}:{REPO / 'src'}"}
    line = _one_line(_cli(tmp_path, "--report-to", "mlflow", env=env))
    assert line.endswith("--report-to mlflow: the mlflow package is not installed (pip install 'alignkit[mlflow]')")
    assert not (tmp_path / "out").exists()
