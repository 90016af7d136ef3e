"""The command line as a user meets it: help for every option, and bad input ending in one clear message,
a non-zero exit and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from alignkit.cli.main import TRAINERS, build_parser, main
from conftest import synthetic_pairs, write_jsonl


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignkit.cli.main", *args], capture_output=True, text=True,
                          timeout=300)


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    for name in TRAINERS:
        assert name in top
    parser = build_parser()
    for name, (cls, _, _) in TRAINERS.items():
        sub = parser._subparsers._group_actions[0].choices[name]
        text = sub.format_help()
        for field, info in cls.model_fields.items():
            flag = "--" + field.replace("_", "-")
            assert flag in text, (name, flag)
            assert info.description, (name, field)
    from alignkit.evaluate.config import EvalConfig

    # eval's parser is written by hand: every setting still has its flag
    eval_help = parser._subparsers._group_actions[0].choices["eval"].format_help()
    for field in EvalConfig.model_fields:
        assert "--" + field.replace("_", "-") in eval_help, ("eval", field)
    dpo_help = parser._subparsers._group_actions[0].choices["dpo"].format_help()
    assert "{dpo,cdpo,ipo,hinge,gdpo,gipo,simpo,orpo}" in dpo_help and "--beta" in dpo_help


@pytest.mark.parametrize(
    "lines, expected",
    [
        (['{"prompt": "a", "chosen": "b", "rejected": "c"}', '{"prompt": "a", "chosen": "b", "rejected": "d"}',
          '{"prompt": "a", "chosen": "b", "rejected": '], r"bad\.jsonl:3: invalid JSON: Expecting value at column 44"),
        (['{"prompt": "a", "chosen": "b", "rejected": "c"}', '{"prompt": "a", "chosen": "b"}'],
         r"bad\.jsonl:2: field 'rejected'"),
        (['{"prompt": "a", "chosen": "b", "rejected": "c", "label": 1.7}'], r"bad\.jsonl:1: field 'label': .*1\.7"),
    ],
    ids=["broken-json-line-3", "missing-rejected", "label-1.7"],
)
def test_malformed_data_one_clear_message(lines, expected, tiny_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    r = run_cli("dpo", "--model", tiny_model, "--data", str(bad), "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, r.stderr
    import re

    assert re.search(expected, errors[0]), errors[0]


def test_skip_invalid_counts_and_reports(tiny_model, tmp_path):
    rows = [json.dumps(p) for p in synthetic_pairs(20, 3)]
    rows[4] = '{"prompt": "x", "chosen": "y"}'
    rows[9] = '{"prompt": "x", "chosen": "y", "rejected": "z", "label": "high"}'
    data = tmp_path / "some-bad.jsonl"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    r = run_cli("dpo", "--model", tiny_model, "--data", str(data), "--output-dir", str(out), "--skip-invalid",
                "--max-steps", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "18 loaded of 20 read; 2 invalid skipped" in r.stderr
    info = json.loads((out / "run_info.json").read_text())["train_data"]
    assert info["skipped"] == 2 and any(":5: field 'rejected'" in e for e in info["errors"])


def test_eval_data_that_is_the_training_file_is_warned_about(tiny_model, tmp_path):
    """Issue 18: --eval-data naming the --data file (here by another path) runs, with one warning line."""
    data = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(8, 5))
    r = run_cli("dpo", "--model", tiny_model, "--data", data, "--eval-data", str(tmp_path / "." / "pairs.jsonl"),
                "--output-dir", str(tmp_path / "out"), "--max-steps", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if "warning:" in ln]
    assert warnings == ["warning: --eval-data is the same file as --data: the held-out metrics will be measured on "
                        "the training data"], r.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model", "no/such/folder/here"], "model 'no/such/folder/here' not found"),
        (["--learning-rate", "-1"], "field 'learning_rate'"),
        (["--max-prompt-length", "600", "--max-length", "512"], "max_prompt_length (600) must be smaller"),
    ],
    ids=["missing-model", "negative-lr", "prompt-longer-than-max"],
)
def test_bad_options(args, expected, tiny_model, pair_files, tmp_path, capsys):
    base = {"--model": tiny_model, "--data": pair_files[0], "--output-dir": str(tmp_path / "o")}
    for k, v in zip(args[::2], args[1::2], strict=True):
        base[k] = v
    code = main(["dpo", *[x for kv in base.items() for x in kv]])
    assert code == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize(
    "command, option, expected",
    [
        ("eval", ["--samples", "0"], "argument --samples: must be at least 1, got 0"),
        ("eval", ["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
        ("eval", ["--max-prompts", "-5"], "argument --max-prompts: must be at least 1, got -5"),
        ("eval", ["--temperature", "-1"], "argument --temperature: must be in (0, inf), got -1"),
        ("eval", ["--max-new-tokens", "ten"], "argument --max-new-tokens: expected an integer, got 'ten'"),
        ("sample", ["--top-p", "1.5"], "argument --top-p: must be in (0, 1], got 1.5"),
        ("chat", ["--temperature", "nan"], "argument --temperature: must be in (0, inf), got nan"),
        ("make-tiny-model", ["--hidden-size", "6"], "argument --hidden-size: must be at least 8, got 6"),
        ("make-tiny-model", ["--hidden-size", "20"], "argument --hidden-size: must be a multiple of 8, got 20"),
        ("label serve", ["--task-timeout", "0"], "argument --task-timeout: must be in (0, inf), got 0"),
    ],
)
def test_out_of_range_options_of_the_other_commands(command, option, expected, tiny_model, tmp_path, capsys):
    """Options outside a trainer config are typed too: refused while parsing, exit 2, one error line."""
    required = {
        "eval": ["--model", tiny_model, "--reference", tiny_model, "--prompts", "p.jsonl", "--output-dir", "o"],
        "sample": ["--model", tiny_model, "--prompts", "p.jsonl", "--output", "o.jsonl"],
        "chat": ["--model", tiny_model],
        "make-tiny-model": ["--output-dir", str(tmp_path / "t")],
        "label serve": [],
    }[command]
    with pytest.raises(SystemExit) as stop:
        main([*command.split(), *required, *option])
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert errors == [f"alignkit {command}: error: {expected}"]
    assert not (tmp_path / "t").exists()


def test_bad_config_file(tiny_model, pair_files, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tiny_model}\ndata: {pair_files[0]}\noutput_dir: {tmp_path / 'o'}\nlearnig_rate: 0.1\n")
    r = run_cli("dpo", "--config", str(cfg))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "run.yaml: field 'learnig_rate': unknown setting" in r.stderr
    cfg.write_text("model: [unclosed\n")
    r = run_cli("sft", "--config", str(cfg))
    assert r.returncode == 2 and "run.yaml:" in r.stderr and "not valid YAML" in r.stderr


def test_config_file_and_flag_override(tiny_model, pair_files, tmp_path):
    out = tmp_path / "o"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {tiny_model}\ndata: {pair_files[0]}\noutput_dir: {out}\nloss: ipo\nbeta: 0.3\n"
                   "max_steps: 50\nprogress: false\n")
    assert main(["dpo", "--config", str(cfg), "--max-steps", "2", "--beta", "0.4"]) == 0
    saved = (out / "config.yaml").read_text()
    assert "loss: ipo" in saved and "beta: 0.4" in saved and "max_steps: 2" in saved
    # the saved config is itself a valid config file: the run can be repeated exactly
    assert main(["dpo", "--config", str(out / "config.yaml"), "--output-dir", str(tmp_path / "again")]) == 0


def test_make_tiny_model_cli(tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", synthetic_pairs(10, 1))
    assert main(["make-tiny-model", "--output-dir", str(tmp_path / "m"), "--data", data, "--arch", "gpt2"]) == 0
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "m").config.model_type == "gpt2"


def test_chat_side_by_side(tiny_model, tmp_path):
    r = subprocess.run([sys.executable, "-m", "alignkit.cli.main", "chat", "--model", tiny_model, "--compare",
                        tiny_model, "--greedy", "--max-new-tokens", "8"], input="Review of Alpha:\nand again\n",
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    blocks = [ln for ln in r.stdout.splitlines() if " | " in ln and not ln.startswith("-")]
    headers = [ln for ln in blocks if ln.startswith(tiny_model)]
    assert len(headers) == 2  # one side-by-side block per message
    rows = [ln for ln in blocks if ln not in headers]
    assert rows and all(ln.split(" | ")[0].strip() == ln.split(" | ")[1].strip() for ln in rows)  # same model, greedy


def test_sample_eval_and_chat_take_a_config_file(tiny_model, tmp_path, capsys):
    """`sample`, `eval` and `chat` read typed settings from --config (flags override it), refuse a missing or bad
    setting with one line, and `sample` and `eval` save their settings beside their outputs, from which a rerun
    reproduces them."""
    import yaml

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p["prompt"]} for p in synthetic_pairs(4, 0)])
    cfg = tmp_path / "sample.yaml"
    cfg.write_text(yaml.safe_dump({"model": tiny_model, "prompts": prompts, "k": 3, "max_new_tokens": 6,
                                   "output": str(tmp_path / "a.jsonl")}))
    assert main(["sample", "--config", str(cfg), "--seed", "5"]) == 0
    saved = yaml.safe_load((tmp_path / "a.config.yaml").read_text())
    assert saved["method"] == "sample" and saved["k"] == 3 and saved["seed"] == 5 and saved["max_new_tokens"] == 6
    first = (tmp_path / "a.jsonl").read_text()
    assert all(len(json.loads(x)["responses"]) >= 2 for x in first.splitlines())
    assert main(["sample", "--config", str(tmp_path / "a.config.yaml"), "--output", str(tmp_path / "b.jsonl")]) == 0
    assert (tmp_path / "b.jsonl").read_text() == first  # the saved settings reproduce the samples
    capsys.readouterr()

    cfg.write_text(yaml.safe_dump({"prompts": prompts, "output": str(tmp_path / "c.jsonl")}))
    assert main(["sample", "--config", str(cfg)]) == 2
    assert capsys.readouterr().err.strip() == f"alignkit sample: error: {cfg}: field 'model': required setting is missing"
    cfg.write_text(yaml.safe_dump({"model": tiny_model, "prompts": prompts, "output": "o.jsonl", "k": 1, "topp": 1}))
    assert main(["sample", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "field 'k': Input should be greater than or equal to 2" in err and "field 'topp': unknown setting" in err

    ev = tmp_path / "eval.yaml"
    ev.write_text(yaml.safe_dump({"model": [f"same={tiny_model}"], "reference": tiny_model, "prompts": prompts,
                                  "max_new_tokens": 4, "output_dir": str(tmp_path / "ev")}))
    assert main(["eval", "--config", str(ev), "--samples", "2"]) == 0
    saved = yaml.safe_load((tmp_path / "ev" / "config.yaml").read_text())
    assert saved["method"] == "eval" and saved["samples"] == 2 and saved["model"] == [f"same={tiny_model}"]
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert set(results["models"]) == {"reference", "same"} and results["settings"]["samples"] == 2

    chat = tmp_path / "chat.yaml"
    chat.write_text(yaml.safe_dump({"model": tiny_model, "compare": tiny_model, "greedy": True, "max_new_tokens": 5}))
    r = subprocess.run([sys.executable, "-m", "alignkit.cli.main", "chat", "--config", str(chat)],
                       input="Review of Alpha:\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{tiny_model:<60} | {tiny_model}" in r.stdout  # side by side: --compare came from the file
