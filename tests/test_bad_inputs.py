"""The bad-input corpus (issue 7): every kind of broken file, config or path a user may hand the CLI, each run
through the real command line (in a subprocess; those that load a model before they fail through `cli.main.main`
in this process, `IN_PROCESS`) and answered with one clear message (naming the file, line and field where there
are such), exit code 2, no traceback and nothing half-written in --output-dir.

The corpus is generated here, into tmp_path (the 50 MB line included), so nothing large lives in git. Every
case is documented, with its message and exit code, in docs/errors.md; `test_docs_list_every_case` keeps the
two in step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest

from conftest import REPO, synthetic_pairs

EXIT_USER_ERROR = 2  # what `alignkit` returns for every AlignkitError (cli/main.py)


def pair(**fields) -> str:
    """One JSON-lines preference record: a good pair unless `fields` override (None drops the field)."""
    record = {"prompt": "Review of Alpha:", "chosen": " great lovely.", "rejected": " awful dull."}
    record.update(fields)
    return json.dumps({k: v for k, v in record.items() if v is not None})


GOOD = [json.dumps(p) for p in synthetic_pairs(6, 11)]


def lines(*rows: str) -> bytes:
    return ("\n".join(rows) + "\n").encode()


def huge_line() -> bytes:
    """A good line, then a valid 50 MB record on one line (a 'JSON-lines' file with no line breaks)."""
    return lines(GOOD[0]) + pair(chosen=" " + "great " * (50 * 2**20 // 6)).encode() + b"\n"


def config(**settings) -> bytes:
    return "".join(f"{k}: {v}\n" for k, v in settings.items()).encode()


@dataclass
class Case:
    """One bad input. `args` and file contents may use {model}, {out}, {dir} (the case's tmp folder)."""

    id: str
    args: list[str]
    message: str  # a regular expression the one error line must match (re.search)
    files: dict[str, bytes | str] = field(default_factory=dict)
    code: int = EXIT_USER_ERROR
    env: dict[str, str] = field(default_factory=dict)  # environment variables of the run (placeholders allowed)
    links: dict[str, str] = field(default_factory=dict)  # symbolic links made in the case's folder: name -> target


TRAIN = ["--model", "{model}", "--output-dir", "{out}", "--max-steps", "1", "--no-progress"]
ONLINE = [*TRAIN, "--reward", "vader", "--max-new-tokens", "4", "--batch-size", "2"]
# issue 18: an RLOO run scored by the user's code in scorer.py, whose functions raise, exit, hang or return junk
RL = ["rloo", *TRAIN, "--prompts", "{dir}/prompts.jsonl", "--max-new-tokens", "4", "--batch-size", "2", "--k", "2"]
SCORER = """import time

import numpy as np


def raises(prompts, responses):
    raise ValueError("no score for this one")


def exits(prompts, responses):
    raise SystemExit(0)


def hangs(prompts, responses):
    time.sleep(3600)


def strings(prompts, responses):
    return ["1.5" for _ in responses]


def boolean(prompts, responses):
    return True


def generator(prompts, responses):
    return (1.0 for _ in responses)


def matrix(prompts, responses):
    return np.zeros((len(responses), 1))
"""
RL_FILES = {"prompts.jsonl": lines(*(json.dumps({"prompt": p["prompt"]}) for p in synthetic_pairs(8, 5))),
            "scorer.py": SCORER}

CASES = [
    # ---- data files: one record wrong, named by file, line and field -----------------------------------
    Case("broken-json-line-3", ["sft", *TRAIN, "--data", "{dir}/bad.jsonl"],
         r"bad\.jsonl:3: invalid JSON: Expecting value at column 31$",
         {"bad.jsonl": lines('{"prompt": "a", "completion": "b"}', '{"prompt": "c", "completion": "d"}',
                             '{"prompt": "e", "completion": ')}),
    Case("chosen-is-a-number", ["dpo", *TRAIN, "--data", "{dir}/bad.jsonl"],
         r"bad\.jsonl:2: field 'chosen': expected a string or a list of messages, got int$",
         {"bad.jsonl": lines(GOOD[0], pair(chosen=5))}),
    Case("missing-rejected", ["rm", *TRAIN, "--data", "{dir}/bad.jsonl"],
         r"bad\.jsonl:3: field 'rejected': required field is missing$",
         {"bad.jsonl": lines(GOOD[0], GOOD[1], pair(rejected=None))}),
    Case("empty-chosen", ["dpo", *TRAIN, "--data", "{dir}/bad.jsonl"],
         r"bad\.jsonl:1: field 'chosen': text is empty$",
         {"bad.jsonl": lines(pair(chosen=""))}),
    Case("whitespace-rejected", ["coh", *TRAIN, "--data", "{dir}/bad.jsonl"],
         r"bad\.jsonl:2: field 'rejected': text is only whitespace$",
         {"bad.jsonl": lines(GOOD[0], pair(rejected=" \n\t "))}),
    Case("chosen-equals-rejected", ["dpo", *TRAIN, "--data", "{dir}/bad.jsonl"],
         r"bad\.jsonl:2: field 'rejected': chosen and rejected are identical$",
         {"bad.jsonl": lines(GOOD[0], pair(chosen=" same.", rejected=" same."))}),
    Case("label-nan", ["dpo", *TRAIN, "--loss", "gdpo", "--data", "{dir}/bad.jsonl"],
         r"bad\.jsonl:2: field 'label': soft label must be a finite number, got nan$",
         {"bad.jsonl": lines(GOOD[0], pair(label=float("nan")))}),  # json.dumps writes the NaN literal
    Case("label-1.5", ["rm", *TRAIN, "--data", "{dir}/bad.jsonl"],
         r"bad\.jsonl:2: field 'label': soft label 1\.5 is outside \[0, 1\]$",
         {"bad.jsonl": lines(GOOD[0], pair(label=1.5))}),
    Case("label-string", ["dpo", *TRAIN, "--data", "{dir}/bad.jsonl"],
         r"bad\.jsonl:2: field 'label': soft label must be a number, got str$",
         {"bad.jsonl": lines(GOOD[0], pair(label="high"))}),
    Case("non-utf8-bytes", ["dpo", *TRAIN, "--data", "{dir}/bad.jsonl"],
         r"bad\.jsonl:2: not valid UTF-8 \(byte 0xe9 at byte 16 of the line\)$",
         {"bad.jsonl": lines(GOOD[0]) + b'{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n'}),
    Case("line-50mb", ["dpo", *TRAIN, "--data", "{dir}/bad.jsonl"],
         r"bad\.jsonl:2: record is 5242\d{4} bytes, over the limit of 16777216; raise max_record_bytes$",
         {"bad.jsonl": huge_line()}),
    Case("votes-unknown-value", ["dpo", *TRAIN, "--data", "{dir}/votes.jsonl"],
         r"votes\.jsonl:2: field 'votes': vote 3 is 'maybe'; expected 'a', 'b' or 'tie'",
         {"votes.jsonl": lines(json.dumps({"prompt": "p", "response_a": "x", "response_b": "y", "votes": ["a"]}),
                               json.dumps({"prompt": "p", "response_a": "x", "response_b": "y",
                                           "votes": ["a", "b", "maybe"]}))}),
    Case("ranking-one-response", ["rm", *TRAIN, "--data", "{dir}/rank.jsonl"],
         r"rank\.jsonl:2: field 'responses': a ranking needs at least 2 responses, got 1$",
         {"rank.jsonl": lines(json.dumps({"prompt": "p", "responses": ["x", "y", "z"]}),
                              json.dumps({"prompt": "p", "responses": ["x"]}))}),
    Case("ppo-prompt-is-a-number", ["ppo", *ONLINE, "--prompts", "{dir}/prompts.jsonl"],
         r"prompts\.jsonl:2: field 'prompt': expected a string or a list of messages, got int$",
         {"prompts.jsonl": lines('{"prompt": "Review of Alpha:"}', '{"prompt": 5}')}),
    Case("rloo-prompt-missing", ["rloo", *ONLINE, "--prompts", "{dir}/prompts.jsonl"],
         r"prompts\.jsonl:2: field 'prompt': required field is missing$",
         {"prompts.jsonl": lines('{"prompt": "Review of Alpha:"}', '{"text": "Review of Bravo:"}')}),
    Case("bad-eval-data", ["dpo", *TRAIN, "--data", "{dir}/train.jsonl", "--eval-data", "{dir}/eval.jsonl"],
         r"eval\.jsonl:1: field 'label': soft label -0\.2 is outside \[0, 1\]$",
         {"train.jsonl": lines(*GOOD), "eval.jsonl": lines(pair(label=-0.2))}),
    # ---- data files: nothing usable in the whole file -----------------------------------------------------
    Case("empty-file", ["dpo", *TRAIN, "--data", "{dir}/empty.jsonl"],
         r"empty\.jsonl: file is empty$", {"empty.jsonl": b""}),
    Case("blank-lines-only", ["sft", *TRAIN, "--data", "{dir}/blank.jsonl"],
         r"blank\.jsonl: no records: the file holds only blank lines$", {"blank.jsonl": b"\n  \n\n"}),
    Case("all-invalid-skipped", ["dpo", *TRAIN, "--skip-invalid", "--data", "{dir}/bad.jsonl"],
         r"bad\.jsonl: no valid records: all 3 records are invalid; the first: "
         r".*bad\.jsonl:1: field 'rejected': chosen and rejected are identical$",
         {"bad.jsonl": lines(pair(rejected=" great lovely."), pair(chosen=""), pair(label=2))}),
    Case("data-file-not-found", ["dpo", *TRAIN, "--data", "{dir}/nope.jsonl"],
         r"data file not found: '.*nope\.jsonl'"),
    # ---- configs --------------------------------------------------------------------------------------------
    Case("config-unknown-key", ["dpo", "--config", "{dir}/run.yaml"],
         r"run\.yaml: field 'betta': unknown setting$",
         {"run.yaml": config(model="{model}", data="{dir}/d.jsonl", output_dir="{out}", betta=0.2),
          "d.jsonl": lines(*GOOD)}),
    Case("config-wrong-type", ["dpo", "--config", "{dir}/run.yaml"],
         r"run\.yaml: field 'batch_size': Input should be a valid integer, unable to parse string as an integer$",
         {"run.yaml": config(model="{model}", data="{dir}/d.jsonl", output_dir="{out}", batch_size="eight"),
          "d.jsonl": lines(*GOOD)}),
    Case("config-not-yaml", ["sft", "--config", "{dir}/run.yaml"],
         r"run\.yaml:3: not valid YAML: mapping values are not allowed here$",
         {"run.yaml": "model: {model}\ndata: {dir}/d.jsonl\n  output_dir: {out}\n"}),
    Case("config-not-a-mapping", ["sft", "--config", "{dir}/run.yaml"],
         r"run\.yaml: a config file must hold a mapping of settings, not list$",
         {"run.yaml": "- model\n- data\n"}),
    Case("config-file-not-found", ["sft", "--config", "{dir}/nope.yaml"],
         r"cannot read config file .*nope\.yaml: No such file or directory$"),
    Case("bad-flag-value", ["dpo", *TRAIN, "--data", "{dir}/d.jsonl", "--warmup-ratio", "2"],
         r"options: field 'warmup_ratio': Input should be less than or equal to 1$",
         {"d.jsonl": lines(*GOOD)}),
    Case("max-length-over-context", ["dpo", *TRAIN, "--data", "{dir}/d.jsonl", "--max-length", "5000"],
         r"--max-length 5000 is longer than the context of model '.*' \(1024 positions: max_position_embeddings "
         r"in its config\.json\); use at most 1024$",
         {"d.jsonl": lines(*GOOD)}),
    Case("rl-length-over-context", ["rloo", *ONLINE, "--prompts", "{dir}/d.jsonl", "--max-new-tokens", "1000"],
         r"--max-prompt-length 256 \+ --max-new-tokens 1000 = 1256 is longer than the context of model '.*' "
         r"\(1024 positions",
         {"d.jsonl": lines(*GOOD)}),
    # ---- model and output paths ------------------------------------------------------------------------------
    Case("model-not-found", ["dpo", *TRAIN, "--data", "{dir}/d.jsonl", "--model", "{dir}/no-such-model"],
         r"model '.*no-such-model' not found: not a folder, a hub id \(org/name\) or a built-in name",
         {"d.jsonl": lines(*GOOD)}),
    Case("model-folder-without-config", ["sft", *TRAIN, "--data", "{dir}/d.jsonl", "--model", "{dir}"],
         r"model folder '.*' has no config\.json: is it a Hugging Face model folder\?$",
         {"d.jsonl": lines('{"prompt": "a", "completion": "b"}')}),
    Case("model-corrupt-config", ["dpo", *TRAIN, "--data", "{dir}/d.jsonl", "--model", "{dir}/model"],
         r"could not load model '.*model': .*config\.json is not a valid JSON file \(Expecting value: line 1",
         {"d.jsonl": lines(*GOOD), "model/config.json": '{"model_type": "llama", "hidden_size": '}),
    Case("output-dir-is-a-file", ["dpo", *TRAIN, "--data", "{dir}/d.jsonl", "--output-dir", "{dir}/notes.txt"],
         r"options: field 'output_dir': '.*notes\.txt' is an existing file, not a folder$",
         {"d.jsonl": lines(*GOOD), "notes.txt": "my notes\n"}),
    Case("output-dir-under-a-file", ["sft", *TRAIN, "--data", "{dir}/d.jsonl", "--output-dir", "{dir}/notes.txt/run"],
         r"options: field 'output_dir': '.*notes\.txt/run' is inside '.*notes\.txt', which is a file, not a folder$",
         {"d.jsonl": lines('{"prompt": "a", "completion": "b"}'), "notes.txt": "my notes\n"}),
    # ---- comma-separated settings: checked with the rest of the config, before any model or data is read ------
    Case("coh-unknown-form", ["coh", *TRAIN, "--data", "{dir}/d.jsonl", "--forms", "single,triple"],
         r"options: field 'forms': unknown form 'triple'; choose from single, chained$",
         {"d.jsonl": lines(*GOOD)}),
    Case("demo-unknown-method", ["demo", "--output-dir", "{out}", "--methods", "dpo,grpoo", "--no-progress"],
         r"options: field 'methods': unknown method 'grpoo'; choose from ppo, rloo, grpo, online-dpo, dpo, cdpo, ipo, "
         r"gdpo, simpo, orpo, kto, coh$"),
    Case("demo-unknown-coh-form", ["demo", "--output-dir", "{out}", "--coh-forms", "chained,triple", "--no-progress"],
         r"options: field 'coh_forms': unknown form 'triple'; choose from single, chained$"),
    # ---- issue 19 and 20: sampling backends, reference-free losses ------------------------------------------------
    Case("backend-vllm-without-vllm", [*RL, "--reward", "vader", "--backend", "vllm"],
         r'--backend vllm needs vLLM, which is not installed: pip install "alignkit\[vllm\]" on a machine with a CUDA '
         r"GPU, or use --backend hf$", {"prompts.jsonl": lines('{"prompt": "Review of Alpha:"}')}),
    Case("orpo-with-reference-model", ["dpo", *TRAIN, "--data", "{dir}/d.jsonl", "--loss", "orpo",
                                       "--reference-model", "{model}"],
         r"options: loss 'orpo' uses no reference model; drop --reference-model$", {"d.jsonl": lines(*GOOD)}),
    Case("kto-label-not-boolean", ["kto", *TRAIN, "--data", "{dir}/k.jsonl"],
         r"k\.jsonl:2: field 'label': must be true \(desirable\) or false \(undesirable\), got 1$",
         {"k.jsonl": lines('{"prompt": "a", "completion": "b", "label": true}',
                           '{"prompt": "a", "completion": "c", "label": 1}')}),
    Case("kto-empty-completion", ["kto", *TRAIN, "--data", "{dir}/k.jsonl"],
         r"k\.jsonl:1: field 'completion': text is empty$",
         {"k.jsonl": lines('{"prompt": "a", "completion": "", "label": false}')}),
    Case("kto-data-given-to-dpo", ["dpo", *TRAIN, "--data", "{dir}/k.jsonl"],
         r"k\.jsonl:1: this is unpaired data \(prompt, completion, label\), not preference pairs; train on it with "
         r"`alignkit kto`$", {"k.jsonl": lines('{"prompt": "a", "completion": "b", "label": true}')}),
    Case("kto-weight-zero", ["kto", *TRAIN, "--data", "{dir}/k.jsonl", "--desirable-weight", "0"],
         r"options: field 'desirable_weight': Input should be greater than 0$",
         {"k.jsonl": lines('{"prompt": "a", "completion": "b", "label": true}')}),
    Case("grpo-one-generation", ["grpo", *ONLINE, "--prompts", "{dir}/prompts.jsonl", "--num-generations", "1"],
         r"options: field 'num_generations': Input should be greater than or equal to 2$",
         {"prompts.jsonl": lines('{"prompt": "Review of Alpha:"}')}),
    Case("grpo-no-reference-with-beta", ["grpo", *ONLINE, "--prompts", "{dir}/prompts.jsonl", "--reference", "none",
                                          "--beta", "0.05"],
         r"options: reference 'none' leaves no KL to weigh: --beta 0.05 needs --reference copy \(or lora-disabled "
         r"with --lora\)$", {"prompts.jsonl": lines('{"prompt": "Review of Alpha:"}')}),
    Case("online-dpo-adaptive-kl", ["online-dpo", *ONLINE, "--prompts", "{dir}/prompts.jsonl", "--adaptive-kl"],
         r"options: online DPO keeps β fixed; drop --adaptive-kl$",
         {"prompts.jsonl": lines('{"prompt": "Review of Alpha:"}')}),
    Case("demo-too-many-prompts", ["demo", "--output-dir", "{out}", "--train-prompts", "1000000", "--no-progress"],
         r"options: the sentiment task has at most 67584 training and 50688 held-out prompts; asked for 1000000 training"),
]

CASES += [  # issue 18: data files
    # text no tokenizer or database takes, numbers Python will not convert, a key given twice, a data path that is
    # not a regular file, pairs with no preference under a loss that ignores labels, two clearer messages
    Case("lone-surrogate-chosen", ["dpo", *TRAIN, "--data", "{dir}/bad.jsonl"],
         r"bad\.jsonl:2: field 'chosen': text holds a lone surrogate \\ud800 at character 2, which is not valid "
         r"Unicode$", {"bad.jsonl": lines(GOOD[0], pair(chosen="x\ud800y"))}),  # json.dumps writes "x\ud800y"
    Case("lone-surrogate-in-message", ["sft", *TRAIN, "--data", "{dir}/chat.jsonl"],
         r"chat\.jsonl:1: field 'messages': message 1 \(user\): text holds a lone surrogate \\udc00 at character 4",
         {"chat.jsonl": lines(json.dumps({"messages": [{"role": "user", "content": "hi \udc00"},
                                                       {"role": "assistant", "content": "hello"}]}))}),
    Case("label-5000-digits", ["dpo", *TRAIN, "--data", "{dir}/bad.jsonl"],
         r"bad\.jsonl:2: invalid JSON: a number has more than 4300 digits$",
         {"bad.jsonl": lines(GOOD[0], pair()[:-1] + ', "label": ' + "1" * 5000 + "}")}),
    Case("label-400-digits", ["dpo", *TRAIN, "--data", "{dir}/bad.jsonl"],
         r"bad\.jsonl:2: field 'label': soft label must be a finite number, got an integer too large for a float$",
         {"bad.jsonl": lines(GOOD[0], pair()[:-1] + ', "label": ' + "1" * 400 + "}")}),
    Case("duplicate-key", ["dpo", *TRAIN, "--data", "{dir}/bad.jsonl"],
         r"bad\.jsonl:2: field 'chosen' appears twice$",
         {"bad.jsonl": lines(GOOD[0], '{"prompt": "p", "chosen": " great.", "chosen": " fine.", "rejected": " dull."}')}),
    Case("data-is-dev-zero", ["dpo", *TRAIN, "--data", "/dev/zero"],
         r"data file '/dev/zero' is not a regular file \(a pipe, device or socket is not read\)$"),
    Case("labels-all-half-dpo", ["dpo", *TRAIN, "--data", "{dir}/ties.jsonl"],
         r"every training pair in '.*ties\.jsonl' has label 0\.5: the pairs carry no preference, and --loss dpo "
         r"ignores labels, so it would learn to prefer whichever response is written as chosen",
         {"ties.jsonl": lines(*(json.dumps({**p, "label": 0.5}) for p in synthetic_pairs(6, 11)))}),
    Case("message-without-content", ["sft", *TRAIN, "--data", "{dir}/chat.jsonl"],
         r"chat\.jsonl:1: field 'messages': message 2 \(assistant\): required field 'content' is missing$",
         {"chat.jsonl": lines('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}')}),
    Case("conversation-ends-with-user", ["dpo", *TRAIN, "--data", "{dir}/chat.jsonl"],
         r"chat\.jsonl:1: field 'chosen': after the 1 shared leading message\(s\): a response must end with an "
         r"assistant message, got 'user'$",
         {"chat.jsonl": lines(json.dumps({
             "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                        {"role": "user", "content": "x"}],
             "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}))}),
]

CASES += [  # issue 18: output folders, checkpoints, cache
    # --output-dir overlapping a model folder the run reads (model/ is a copy of the tiny model, which must stay
    # as it is), and ALIGNKIT_CACHE where the reference log-probs cannot be cached; damaged checkpoints under
    # --resume need a first run: tests/test_kill_resume.py
    Case("output-dir-is-the-model", ["dpo", *TRAIN, "--data", "{dir}/d.jsonl", "--model", "{dir}/model",
                                     "--output-dir", "{dir}/model"],
         r"--output-dir '.*model' is the --model folder '.*model'; choose an output folder apart from the models "
         r"the run reads$", {"d.jsonl": lines(*GOOD), "model/notes.txt": "my model\n"}),
    Case("output-dir-inside-the-reference", ["dpo", *TRAIN, "--data", "{dir}/d.jsonl", "--reference-model",
                                             "{dir}/model", "--output-dir", "{dir}/model/dpo"],
         r"--output-dir '.*model/dpo' is inside the --reference-model folder '.*model'; choose an output folder",
         {"d.jsonl": lines(*GOOD), "model/notes.txt": "my model\n"}),
    Case("output-dir-holds-the-value-model", ["ppo", *ONLINE, "--prompts", "{dir}/d.jsonl", "--value-model",
                                              "{dir}/model", "--output-dir", "{dir}"],
         r"--output-dir '.*' contains the --value-model folder '.*model'; choose an output folder",
         {"d.jsonl": lines(*GOOD), "model/notes.txt": "my model\n"}),
    Case("cache-is-a-file", ["dpo", *TRAIN, "--data", "{dir}/d.jsonl"],
         r"ALIGNKIT_CACHE '.*notes\.txt' is a file, not a folder; point ALIGNKIT_CACHE at a folder alignkit may "
         r"write$", {"d.jsonl": lines(*GOOD), "notes.txt": "my notes\n"}, env={"ALIGNKIT_CACHE": "{dir}/notes.txt"}),
    Case("cache-inside-a-file", ["dpo", *TRAIN, "--data", "{dir}/d.jsonl"],
         r"ALIGNKIT_CACHE '.*notes\.txt/cache' is inside '.*notes\.txt', which is a file, not a folder",
         {"d.jsonl": lines(*GOOD), "notes.txt": "my notes\n"}, env={"ALIGNKIT_CACHE": "{dir}/notes.txt/cache"}),
]

CASES += [  # issue 18: reward sources
    # a plain causal LM as --reward-model (its score head would be random), and user reward code that raises,
    # exits, hangs or returns something that is not one number per response; batch 1 is the first evaluation
    Case("reward-model-plain-lm", [*RL, "--reward-model", "{model}"],
         r"reward model '.*' has no trained score head \(its checkpoint lacks score\.weight, and its config\.json "
         r"has no alignkit_reward_offset\): is it a plain causal LM\? Give a reward model trained by `alignkit rm`$",
         RL_FILES),
    Case("reward-raises", [*RL, "--reward", "{dir}/scorer.py:raises"],
         r"reward .*scorer\.py:raises failed on batch 1: ValueError: no score for this one$", RL_FILES),
    Case("reward-exits-0", [*RL, "--reward", "{dir}/scorer.py:exits"],
         r"reward .*scorer\.py:exits failed on batch 1: SystemExit: 0$", RL_FILES),
    Case("reward-exits-on-import", [*RL, "--reward", "{dir}/exits.py:score"],
         r"--reward '.*exits\.py:score': importing .*exits\.py failed: SystemExit: 0$",
         {**RL_FILES, "exits.py": "import sys\nsys.exit(0)\n"}),
    Case("reward-hangs", [*RL, "--reward", "{dir}/scorer.py:hangs", "--reward-timeout", "1"],
         r"reward .*scorer\.py:hangs timed out on batch 1: no result after 1 s \(--reward-timeout\)$", RL_FILES),
    Case("reward-returns-strings", [*RL, "--reward", "{dir}/scorer.py:strings"],
         r"reward function .*scorer\.py:strings returned '1\.5' \(str\) for response 0; expected a number$", RL_FILES),
    Case("reward-returns-bool", [*RL, "--reward", "{dir}/scorer.py:boolean"],
         r"reward function .*scorer\.py:boolean must return a list of numbers, one per response; got bool$", RL_FILES),
    Case("reward-returns-generator", [*RL, "--reward", "{dir}/scorer.py:generator"],
         r"reward function .*scorer\.py:generator must return a list of numbers, one per response; got generator$",
         RL_FILES),
    Case("reward-returns-2d-array", [*RL, "--reward", "{dir}/scorer.py:matrix"],
         r"reward function .*scorer\.py:matrix returned an array of shape \(\d+, 1\) and dtype float64; expected a 1-D "
         r"array of numbers, one per response$", RL_FILES),
]


DEEP = 100_000  # levels of nesting: past Python's recursion limit in json and PyYAML

CASES += [  # issue 18: own round
    # JSON and YAML nested past the recursion limit, a message with no role, a prompt that ends with the assistant,
    # the second reward option named in its error, command-line bytes that are not UTF-8, config files that are
    # not text, not a file, or hold a setting twice or a number Python will not convert, symbolic links that lead
    # nowhere, a truncated weights file
    Case("json-nested-too-deep", ["dpo", *TRAIN, "--data", "{dir}/deep.json"],
         r"deep\.json: invalid JSON: nested too deeply$", {"deep.json": "[" + '{"x": ' * DEEP + "1" + "}" * DEEP + "]"}),
    Case("jsonl-nested-too-deep", ["dpo", *TRAIN, "--data", "{dir}/deep.jsonl"],
         r"deep\.jsonl:2: invalid JSON: nested too deeply$",
         {"deep.jsonl": lines(GOOD[0], '{"x": ' * DEEP + "1" + "}" * DEEP)}),
    Case("message-without-role", ["sft", *TRAIN, "--data", "{dir}/chat.jsonl"],
         r"chat\.jsonl:1: field 'messages': message 1: required field 'role' is missing$",
         {"chat.jsonl": lines('{"messages": [{"content": "hi"}, {"role": "assistant", "content": "hello"}]}')}),
    Case("prompt-ends-with-assistant", ["dpo", *TRAIN, "--data", "{dir}/chat.jsonl"],
         r"chat\.jsonl:1: field 'prompt': message 2, the last, is from the assistant; a prompt must end with a user "
         r"or system message",
         {"chat.jsonl": lines(json.dumps({"prompt": [{"role": "user", "content": "q"},
                                                     {"role": "assistant", "content": "a"}],
                                          "chosen": [{"role": "assistant", "content": "x"}],
                                          "rejected": [{"role": "assistant", "content": "y"}]}))}),
    Case("monitor-reward-not-found", [*RL, "--reward", "vader", "--monitor-reward", "{dir}/nope.py:score"],
         r"--monitor-reward '.*nope\.py:score': file .*nope\.py not found$", RL_FILES),
    Case("argument-not-utf8", ["dpo", *TRAIN, "--data", "{dir}/d\udcff.jsonl"],  # the byte 0xff in the path
         r"--data: not valid UTF-8 \(byte 0xff at character \d+\); give text and paths in UTF-8$"),
    Case("config-setting-twice", ["dpo", "--config", "{dir}/run.yaml"],
         r"run\.yaml:4: not valid YAML: setting 'beta' appears twice \(first on line 3\)$",
         {"run.yaml": b"model: {model}\noutput_dir: {out}\nbeta: 0.1\nbeta: 0.5\n"}),
    Case("config-5000-digits", ["dpo", "--config", "{dir}/run.yaml"],
         r"run\.yaml:1: not valid YAML: a number has more than 4300 digits$",
         {"run.yaml": config(batch_size="1" * 5000)}),
    Case("config-not-utf8", ["dpo", "--config", "{dir}/run.yml"],
         r"run\.yml:2: not valid UTF-8 \(byte 0xe9\); a config file is YAML text$",
         {"run.yml": b"beta: 0.1\nmodel: caf\xe9\n"}),
    Case("config-lone-surrogate", ["dpo", "--config", "{dir}/run.yaml"],
         r"run\.yaml: field 'model': text holds a lone surrogate \\ud800 at character 1, which is not valid "
         r"Unicode$",
         {"run.yaml": b'model: "\\ud800"\n'}),
    Case("config-nested-too-deep", ["dpo", "--config", "{dir}/run.yaml"],
         r"run\.yaml: not valid YAML: nested too deeply$", {"run.yaml": ("x: " + "[" * DEEP + "]" * DEEP).encode()}),
    Case("config-is-a-folder", ["dpo", "--config", "{dir}"], r"config file .* is not a regular file$"),
    Case("data-broken-link", ["dpo", *TRAIN, "--data", "{dir}/d.jsonl"],
         r"data file '.*d\.jsonl' is a symbolic link that leads nowhere \(its target is missing, or the links form a "
         r"loop\)$", links={"d.jsonl": "moved.jsonl"}),
    Case("output-dir-broken-link", ["dpo", *TRAIN, "--data", "{dir}/d.jsonl", "--output-dir", "{dir}/run"],
         r"options: field 'output_dir': '.*run' is a symbolic link that leads nowhere", {"d.jsonl": lines(*GOOD)},
         links={"run": "run"}),
    Case("model-weights-truncated", ["dpo", *TRAIN, "--data", "{dir}/d.jsonl", "--model", "{dir}/model"],
         r"could not load model '.*model': .*model\.safetensors: truncated or not a safetensors file \(1000 bytes\)$",
         {"d.jsonl": lines(*GOOD), "model/model.safetensors": b"\0" * 1000}),
]

CASES += [  # the labeling app's import: single responses to judge good or bad (no database is created)
    Case("label-thumbs-empty-completion", ["label", "import", "{dir}/one.jsonl", "--db", "{dir}/label.db"],
         r"one\.jsonl:2: field 'completion': text is empty$",
         {"one.jsonl": lines('{"prompt": "Review of Alpha:", "completion": " great."}',
                             '{"prompt": "Review of Beta:", "completion": ""}')}),
    Case("label-thumbs-missing-responses", ["label", "import", "{dir}/samples.jsonl", "--thumbs", "--db",
                                            "{dir}/label.db"],
         r"samples\.jsonl:2: field 'responses': required field is missing$",
         {"samples.jsonl": lines('{"prompt": "Review of Alpha:", "responses": [" great.", " dull."]}',
                                 '{"prompt": "Review of Beta:", "response": " fine."}')}),
]


def run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignkit.cli.main", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env={**os.environ, **env} if env else None)


# Cases that get as far as training (torch, transformers and the model loaded) before they fail: as a fresh process
# each spends ~8 s importing, so they run through `cli.main.main` in this process, where those imports are done
# once. An exception that escapes `main` fails the test as a traceback would. The hung reward stays a process of
# its own: that its daemon thread does not keep the process alive is part of what it checks.
IN_PROCESS = {"reward-model-plain-lm", "reward-raises", "reward-exits-0", "reward-exits-on-import",
              "reward-returns-strings", "reward-returns-bool", "reward-returns-generator", "reward-returns-2d-array",
              "monitor-reward-not-found"}


def run_main(args: list[str], capfd) -> subprocess.CompletedProcess:
    """`alignkit ARGS` run in this process, its exit code and output as `run_cli` returns them."""
    from alignkit.cli.main import main

    capfd.readouterr()
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def fill(text: str, values: dict[str, str]) -> str:
    for k, v in values.items():
        text = text.replace("{" + k + "}", v)
    return text


assert IN_PROCESS <= {c.id for c in CASES}
assert not any(c.env for c in CASES if c.id in IN_PROCESS)  # run_main cannot give a case its own environment


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_one_clear_message(case: Case, tiny_model, tmp_path, capfd):
    values = {"model": str(tiny_model), "out": str(tmp_path / "out"), "dir": str(tmp_path)}
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.startswith("model/"):  # a copy of the tiny model, with this file spoilt
            shutil.copytree(tiny_model, path.parent, dirs_exist_ok=True)
        if isinstance(content, str) or name.endswith(".yaml"):  # text with placeholders
            content = fill(content if isinstance(content, str) else content.decode(), values).encode()
        path.write_bytes(content)
    for name, target in case.links.items():
        (tmp_path / name).symlink_to(target)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    t0 = time.perf_counter()
    args = [fill(a, values) for a in case.args]
    if case.id in IN_PROCESS:
        r = run_main(args, capfd)
    else:
        r = run_cli(args, {k: fill(v, values) for k, v in case.env.items()})
    elapsed = time.perf_counter() - t0

    assert r.returncode == case.code, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, r.stderr[-3000:]
    command = case.args[0]
    assert errors[0].startswith(f"alignkit {command}: error: "), errors[0]
    assert re.search(case.message, errors[0]), errors[0]
    assert "saved to" not in r.stdout
    # nothing that could be mistaken for a result: no output folder, and every input file untouched
    assert not (tmp_path / "out").exists()
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    if case.id == "line-50mb":
        assert elapsed < 60, f"the 50 MB line took {elapsed:.0f} s to refuse"


def test_long_prompt_is_cut_and_counted(tiny_model, tmp_path, capfd):
    """Not an error: a prompt over --max-prompt-length keeps its end, and the run says how many were cut."""
    long = pair(prompt="Review of Alpha: " * 600)  # ~3,000 tokens, over the model's 1,024 positions too
    data = tmp_path / "d.jsonl"
    data.write_bytes(lines(long, *GOOD))
    out = tmp_path / "out"
    r = run_main(["dpo", "--model", str(tiny_model), "--data", str(data), "--output-dir", str(out), "--max-steps",
                  "1", "--no-progress", "--eval-fraction", "0"], capfd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 prompts over --max-prompt-length were cut (their end kept)" in r.stdout
    assert json.loads((out / "run_info.json").read_text())["truncation"] == {"prompt_truncated": 1}


def test_reward_failing_after_a_step_marks_the_folder(tiny_model, tmp_path, capfd):
    """Issue 18: a reward that fails once a step is trained keeps the folder (its metrics), marked FAILED.txt with
    the one-line error; a later run into the folder that succeeds removes the mark."""
    (tmp_path / "late.py").write_text("calls = []\n\n\ndef score(prompts, responses):\n    calls.append(1)\n"
                                      "    if len(calls) == 2:\n        raise RuntimeError('judge went away')\n"
                                      "    return [0.5] * len(responses)\n")
    (tmp_path / "prompts.jsonl").write_bytes(RL_FILES["prompts.jsonl"])
    out = tmp_path / "out"
    args = [fill(a, {"model": str(tiny_model), "out": str(out), "dir": str(tmp_path)}) for a in RL]
    r = run_main([*args, "--reward", str(tmp_path / "late.py:score"), "--eval-samples", "0", "--max-steps", "2"], capfd)
    assert r.returncode == EXIT_USER_ERROR and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].endswith("late.py:score failed on batch 2: RuntimeError: judge went away")
    assert (out / "FAILED.txt").read_text().startswith("this run stopped before it finished: reward ")
    assert (out / "metrics.jsonl").exists() and not (out / "model.safetensors").exists()
    r = run_main([*args, "--reward", "vader", "--eval-samples", "0"], capfd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (out / "FAILED.txt").exists() and (out / "model.safetensors").exists()


def test_docs_list_every_case():
    """docs/errors.md lists every case of the corpus with its exit code, and the README points to it."""
    page = (REPO / "docs" / "errors.md").read_text()
    rows = {}
    for line in page.splitlines():
        m = re.match(r"\|\s*`([\w.-]+)`\s*\|.*\|\s*(\d+)\s*\|\s*$", line)
        if m:
            rows[m.group(1)] = int(m.group(2))
    assert rows == {c.id: c.code for c in CASES}
    assert "docs/errors.md" in (REPO / "README.md").read_text()


def test_config_json_the_weights_do_not_fit(tiny_model, tmp_path, capfd):
    """Issue 18, own round: a model folder whose config.json gives other shapes than its weights (a config copied
    from another model) ends in one line, not transformers' size-mismatch traceback."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["hidden_size"] *= 2
    (model / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "d.jsonl").write_bytes(lines(*GOOD))
    r = run_main(["dpo", *[fill(a, {"model": str(model), "out": str(tmp_path / "out")}) for a in TRAIN],
                  "--data", str(tmp_path / "d.jsonl")], capfd)
    assert r.returncode == EXIT_USER_ERROR and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].endswith(
        "could not load model '" + str(model) + "': its weights do not have the shapes its config.json gives (is "
        "config.json from another model?)")
    assert not (tmp_path / "out").exists()
