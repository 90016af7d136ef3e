"""`alignkit demo --quick` end to end: every method's policy beats the reference on held-out prompts by the
gold scorer (the 95% interval of the paired per-prompt difference lies above 0), the reward model orders clear
pairs (gold gap >= 0.3) by the gold, and a second run reuses the cached stages."""

import json

import pytest

from alignkit.cli.main import main
from alignkit.lab.demo import METHODS

RM_CLEAR_PAIRS = 0.8  # the quick demo's reward model on held-out pairs whose gold gap is at least 0.3


def test_quick_demo_every_method_beats_reference(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output-dir", str(out), "--no-progress"]) == 0
    results = json.loads((out / "eval" / "results.json").read_text())
    ref = results["models"]["reference"]
    for method in METHODS:
        pol = results["models"][method]
        assert pol["gold_diff"] - pol["gold_diff_ci95"] > 0, (method, pol["gold_diff"], pol["gold_diff_ci95"])
        assert pol["gold_diff"] == pytest.approx(pol["gold_mean"] - ref["gold_mean"], abs=1e-9)  # same prompts
        assert pol["win_rate"] > 0.5 and pol["kl"] > 0, method
    rm = results["reward_model"]
    assert rm["by_gold_gap"]["0.3"]["pairs"] >= 200 and rm["by_gold_gap"]["0.3"]["accuracy"] >= RM_CLEAR_PAIRS, rm
    assert 0.5 < rm["accuracy_vs_gold"] <= rm["by_gold_gap"]["0.3"]["accuracy"], rm
    assert "reward model accuracy vs gold" in capsys.readouterr().out
    for png in ("frontier.png", "curves.png"):  # real plots: PNG files of a real size, not empty canvases
        data = (out / "eval" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, png
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width >= 600 and height >= 400, (png, width, height)
    page = (out / "eval" / "report.html").read_text()
    assert "frontier.png" in page and all(f"<th>{m}</th>" in page for m in METHODS)

    # a second run reuses every stage and the evaluation samples: no model or sample file is rewritten
    files = [out / m / "model.safetensors" for m in METHODS] + sorted((out / "eval" / "samples").glob("*.json"))
    assert len(files) == 2 * len(METHODS) + 1
    stamps = [f.stat().st_mtime_ns for f in files]
    assert main(["demo", "--quick", "--output-dir", str(out), "--no-progress"]) == 0
    assert stamps == [f.stat().st_mtime_ns for f in files]
    again = json.loads((out / "eval" / "results.json").read_text())
    assert all(again["stage_seconds"][m] < 1.0 for m in METHODS)


def test_rerun_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo_config.json").write_text(json.dumps({"k": 2, "learning_rate": 1e-3, "methods": "dpo"}))
    assert main(["demo", "--quick", "--k", "4", "--output-dir", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "other settings (k: 2 -> 4)" in err and "Traceback" not in err and "--output-dir" in err
    # a folder from before --mixed-precision existed ran in float32: resuming it in bf16 would mix precisions
    assert main(["demo", "--quick", "--k", "2", "--mixed-precision", "auto", "--output-dir", str(out),
                 "--no-progress"]) == 2
    assert "other settings (mixed_precision: 'no' -> 'auto')" in capsys.readouterr().err


def test_lora_with_train_layers_is_refused(tmp_path, capsys):
    assert main(["demo", "--quick", "--lora", "--rm-train-layers", "2", "--output-dir", str(tmp_path / "d"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "lora and train_layers" in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()
