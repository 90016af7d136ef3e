"""A run killed with SIGKILL mid-training and resumed ends with the weights and metrics of an uninterrupted run
(DPO, and PPO with a fixed seed); a half-written checkpoint left behind is ignored. A damaged checkpoint is
skipped, or refused with one line when no intact one is left, and a finished run resumed with a larger
--max-steps trains the new steps on a rebuilt learning-rate schedule."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import REPO, synthetic_pairs, write_jsonl

SCRIPT = '''
import json, sys, time
from alignkit import DPOConfig, PPOConfig
from alignkit.train.loop import train
from alignkit.train.ppo import build_ppo
from alignkit.train.preference import build_dpo

method, cfg, delay = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
cfg = (DPOConfig if method == "dpo" else PPOConfig)(**cfg)
task = (build_dpo if method == "dpo" else build_ppo)(cfg)
if delay:  # slow training down so the test can kill it between two checkpoints
    attr = "loss" if method == "dpo" else "experience"
    inner = getattr(task, attr)

    def slow(model, batch):
        if model.training:
            time.sleep(delay)
        return inner(model, batch)

    setattr(task, attr, slow)
train(task, cfg)
'''

REWARD_PY = '''
def score(prompts, responses):
    return [sum(w in ("great", "wonderful", "superb") for w in r.split()) / max(len(r.split()), 1) for r in responses]
'''

TIMING = ("tokens_per_s", "examples_per_s", "elapsed_s", "gen_tokens_per_s", "gen_seconds", "seconds")


def _start(tmp_path, method: str, cfg: dict, delay: float) -> subprocess.Popen:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), method, json.dumps(cfg), str(delay)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def _train_metrics(out) -> list[dict]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if k not in TIMING} for m in lines]


@pytest.mark.parametrize("method", ["dpo", "ppo"])
def test_sigkill_then_resume_matches_uninterrupted(method, tiny_model, tmp_path):
    if method == "dpo":
        data = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(96, 7))
        cfg = dict(model=tiny_model, data=data, batch_size=8, max_steps=10, learning_rate=1e-3, save_every=2,
                   eval_fraction=0.1, progress=False, seed=0)
    else:
        prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p["prompt"]} for p in synthetic_pairs(96, 8)])
        (tmp_path / "reward.py").write_text(REWARD_PY)
        cfg = dict(model=tiny_model, prompts=prompts, reward=f"{tmp_path / 'reward.py'}:score", batch_size=8,
                   mini_batch_size=4, max_steps=10, max_new_tokens=8, learning_rate=1e-3, save_every=2,
                   adaptive_kl=True, kl_target=1.0, kl_horizon=50, eval_samples=8, progress=False, seed=0)
    full, killed = tmp_path / "full", tmp_path / "killed"
    _finish(_start(tmp_path, method, {**cfg, "output_dir": str(full)}, 0.0))

    proc = _start(tmp_path, method, {**cfg, "output_dir": str(killed)}, 0.4)
    deadline = time.time() + 300
    while not (killed / "checkpoint-4" / "trainer_state.json").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # during step 5 or 6 (0.4 s per step)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "config.json").exists()  # no final model: the run really was cut short
    done = sorted(p.name for p in killed.glob("checkpoint-*"))
    assert done and done[-1] in ("checkpoint-4", "checkpoint-6"), done
    # what a kill in the middle of writing checkpoint 8 leaves: its temporary folder, or a folder without state
    (killed / ".checkpoint-8.tmp" / "state").mkdir(parents=True)
    (killed / ".checkpoint-8.tmp" / "state" / "optimizer.bin").write_bytes(b"\0" * 100)
    (killed / "checkpoint-8").mkdir()
    (killed / "checkpoint-8" / "model.safetensors").write_bytes(b"truncated")

    resumed = _start(tmp_path, method, {**cfg, "output_dir": str(killed), "resume": True}, 0.0)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert f"resuming from {killed / done[-1]}" in out + err

    a = AutoModelForCausalLM.from_pretrained(full).state_dict()
    b = AutoModelForCausalLM.from_pretrained(killed).state_dict()
    moved = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    assert max(float((a[k] - moved[k]).abs().max()) for k in a) > 1e-3  # the weights did change
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5)
    ma, mb = _train_metrics(full), _train_metrics(killed)
    assert [m["step"] for m in mb] == [m["step"] for m in ma]
    for x, y in zip(ma, mb, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            want = pytest.approx(x[k], rel=1e-5, abs=1e-6) if isinstance(x[k], float) else x[k]
            assert y[k] == want, (x["step"], k)


# ---- issue 18: damaged checkpoints and a changed run length under --resume (through the CLI) -------------------

DAMAGE = {  # what is done to checkpoint-2: (its file, how)
    "model-truncated": ("state/model.safetensors", lambda p: os.truncate(p, 1000)),
    "optimizer-empty": ("state/optimizer.bin", lambda p: p.write_bytes(b"")),
    "state-garbage": ("trainer_state.json", lambda p: p.write_text("garbage{{")),
    "step-not-a-number": ("trainer_state.json", lambda p: p.write_text('{"step": "two"}')),
}


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignkit.cli.main", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tiny_model, tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished 2-step DPO run with checkpoint-1 and checkpoint-2, and its arguments (without --output-dir and
    --max-steps)."""
    d = tmp_path_factory.mktemp("finished")
    data = write_jsonl(d / "pairs.jsonl", synthetic_pairs(40, 7))
    args = ["dpo", "--model", tiny_model, "--data", data, "--batch-size", "4", "--learning-rate", "1e-3",
            "--save-every", "1", "--no-progress", "--seed", "0"]
    r = _cli([*args, "--output-dir", str(d / "run"), "--max-steps", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    return d / "run", args


@pytest.mark.parametrize("kind", DAMAGE)
def test_resume_refuses_a_damaged_checkpoint(kind, finished_run, tmp_path):
    """The only checkpoint damaged: one line naming the file, exit 2, nothing in the output folder touched."""
    run, args = finished_run
    out = tmp_path / "run"
    shutil.copytree(run, out)
    shutil.rmtree(out / "checkpoint-1")
    name, spoil = DAMAGE[kind]
    spoil(out / "checkpoint-2" / name)
    before = _files(out)
    r = _cli([*args, "--output-dir", str(out), "--max-steps", "2", "--resume"])
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, r.stderr[-3000:]
    assert errors[0].startswith(f"alignkit dpo: error: cannot resume: damaged checkpoint: "
                                f"{out / 'checkpoint-2' / name}: "), errors[0]
    assert errors[0].endswith("there is no older one: run without --resume to start over"), errors[0]
    assert _files(out) == before


def test_resume_skips_a_damaged_checkpoint(finished_run, tmp_path):
    """A damaged newest checkpoint is skipped, with a note; the run resumes from the one before and ends with the
    weights of the run that was never damaged (and a new, intact checkpoint-2)."""
    from safetensors.torch import load_file

    from alignkit.train.checkpoints import damage

    run, args = finished_run
    out = tmp_path / "run"
    shutil.copytree(run, out)
    (out / "checkpoint-2" / "state" / "optimizer.bin").write_bytes(b"")
    r = _cli([*args, "--output-dir", str(out), "--max-steps", "2", "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"skipping a damaged checkpoint: {out / 'checkpoint-2' / 'state' / 'optimizer.bin'}: file is empty" \
        in r.stdout, r.stdout
    assert f"resuming from {out / 'checkpoint-1'} (step 1)" in r.stdout, r.stdout
    assert damage(out / "checkpoint-2") is None
    a, b = load_file(run / "model.safetensors"), load_file(out / "model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5)


def test_resume_with_more_steps_rebuilds_the_schedule(finished_run, tmp_path):
    """A finished run extended with a larger --max-steps: the linear schedule that ended at 0 is rebuilt for the
    new length, so the new step trains (at lr 1e-3 x (3 - 2) / 3), and the run says so."""
    from safetensors.torch import load_file

    run, args = finished_run
    out = tmp_path / "run"
    shutil.copytree(run, out)
    r = _cli([*args, "--output-dir", str(out), "--max-steps", "3", "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "the run now has 3 steps, not 2: the linear learning-rate schedule is rebuilt for 3 steps and " \
           "continues at lr 0.000333" in r.stdout, r.stdout
    assert [m["step"] for m in _train_metrics(out) if m["split"] == "train"] == [1, 2, 3]
    a, b = load_file(run / "model.safetensors"), load_file(out / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) > 1e-4  # step 3 moved the weights
