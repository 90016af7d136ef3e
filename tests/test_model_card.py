"""The model card (`README.md`) written next to every trained model: Hugging Face front matter, the data counts of
`run_info.json`, the final held-out metrics of the run, and a loading snippet that works."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import synthetic_pairs, write_jsonl

FAST = dict(batch_size=8, progress=False, warmup_ratio=0.0, seed=0, max_steps=2)


def parse(card: Path) -> tuple[dict, str]:
    text = card.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def table(body: str, section: str) -> dict[str, str]:
    part = body.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| (\S+) \| (.+) \|$", part, flags=re.M)[1:])  # the header row dropped


def check_counts(body: str, out: Path) -> dict:
    info = json.loads((out / "run_info.json").read_text())
    n = info["records"]
    assert f"{info['train_data']['loaded']} records loaded" in body
    assert f"{n['train']} records for training, {n['eval']} held out" in body
    return n


def check_eval(body: str, result) -> None:
    shown = table(body, "Evaluation")
    assert set(shown) == set(result.eval) and result.eval
    for k, v in result.eval.items():
        assert float(shown[k]) == pytest.approx(v, rel=1e-5, abs=1e-9), k


def test_dpo_card(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from alignkit.train import DPOConfig, run_dpo

    data = write_jsonl(tmp_path / "pairs.jsonl", synthetic_pairs(40, 1))
    out = tmp_path / "gdpo"
    result = run_dpo(DPOConfig(model=tiny_model, data=data, output_dir=str(out), loss="gdpo", lora=True, lora_r=4,
                               eval_fraction=0.25, **FAST))
    meta, body = parse(out / "README.md")
    assert "base_model" not in meta  # a local folder without a card of its own: no hub id to name
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["tags"] == ["alignkit", "dpo", "gdpo", "lora"]
    assert "datasets" not in meta
    n = check_counts(body, out)
    # a quarter held out, in whole prompts (synthetic pairs repeat prompts): at least 10 of the 40, none lost
    assert n["train"] + n["eval"] == 40 and 10 <= n["eval"] < 20, n
    assert "`pairs.jsonl`" in body and "--eval-fraction 0.25" in body and "LoRA (r=4" in body
    settings = table(body, "Settings")
    assert settings["loss"] == "`gdpo`" and settings["max_steps"] == "2" and settings["lora_r"] == "4"
    check_eval(body, result)
    snippet = body.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(snippet.strip().splitlines()) == 3 and "AutoModelForCausalLM.from_pretrained" in snippet
    AutoModelForCausalLM.from_pretrained(out)  # the folder the card describes loads as it says


def test_reward_model_card_and_chain(tiny_model, tmp_path):
    """A reward model's card (with --eval-data), then a run from a folder whose card names a hub base model:
    the new card names it too."""
    import shutil

    from transformers import AutoModelForSequenceClassification

    from alignkit.train import RewardConfig, SFTConfig, run_reward, run_sft

    data = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(32, 1))
    held = write_jsonl(tmp_path / "held.jsonl", synthetic_pairs(12, 2))
    out = tmp_path / "rm"
    result = run_reward(RewardConfig(model=tiny_model, data=data, eval_data=held, output_dir=str(out), **FAST))
    meta, body = parse(out / "README.md")
    assert meta["tags"] == ["alignkit", "reward-model"] and meta["pipeline_tag"] == "text-classification"
    assert meta["library_name"] == "transformers" and "base_model" not in meta
    assert check_counts(body, out) == {"train": 32, "eval": 12}
    assert "held out from `held.jsonl`" in body
    check_eval(body, result)
    assert "AutoModelForSequenceClassification.from_pretrained" in body and "num_labels=1" in body
    assert AutoModelForSequenceClassification.from_pretrained(out, num_labels=1).config.num_labels == 1

    # a base whose own card names a hub model (as an `alignkit sft` of smollm2-135m-instruct would have)
    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    (base / "README.md").write_text("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\n---\n# base\n")
    sft = tmp_path / "sft"
    demos = write_jsonl(tmp_path / "demos.jsonl", [{"prompt": p["prompt"], "completion": p["chosen"]}
                                                   for p in synthetic_pairs(20, 3)])
    res = run_sft(SFTConfig(model=str(base), data=demos, output_dir=str(sft), eval_fraction=0.0, **FAST))
    meta, body = parse(sft / "README.md")
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["tags"] == ["alignkit", "sft"]
    assert "itself trained from `HuggingFaceTB/SmolLM2-135M-Instruct`" in body
    assert "No held-out evaluation" in body and res.eval == {}
    assert check_counts(body, sft) == {"train": 20, "eval": 0}


def test_front_matter_hub_ids(tmp_path, monkeypatch):
    """Built-in model names map to their hub id, hub model ids stay, data that the readers would fetch from the
    hub is listed under `datasets` (a local file of that name is not)."""
    from alignkit.train.card import front_matter
    from alignkit.train.config import DPOConfig, RLOOConfig

    monkeypatch.chdir(tmp_path)
    cfg = DPOConfig(model="smollm2-135m-instruct", data="Anthropic/hh-rlhf:test", eval_data="org/held-out",
                    output_dir="o")
    meta = front_matter("dpo", cfg)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["datasets"] == ["Anthropic/hh-rlhf", "org/held-out"]
    assert meta["tags"] == ["alignkit", "dpo"]

    cfg = DPOConfig(model="org/some-model", data="org/prefs.jsonl", output_dir="o", loss="ipo")
    meta = front_matter("dpo-ipo", cfg)  # a missing .jsonl is a missing file to the readers, not a hub id
    assert meta["base_model"] == "org/some-model" and "datasets" not in meta and meta["tags"][-1] == "ipo"

    (tmp_path / "org").mkdir()
    write_jsonl(tmp_path / "org" / "prompts", [{"prompt": "x"}])  # an existing local path shaped like a hub id
    cfg = RLOOConfig(model="smollm2-135m-instruct", prompts="org/prompts", reward="vader", output_dir="o")
    meta = front_matter("rloo", cfg)
    assert "datasets" not in meta and meta["tags"] == ["alignkit", "rloo", "rlhf"]


def test_user_readme_kept_own_card_rewritten(tmp_path):
    from alignkit.train.card import write_card
    from alignkit.train.config import SFTConfig

    cfg = SFTConfig(model="smollm2-135m-instruct", data="d.jsonl", output_dir=str(tmp_path))
    result = SimpleNamespace(eval={"loss": 1.5}, steps=3)
    (tmp_path / "README.md").write_text("my own notes\n")
    assert write_card(tmp_path, "sft", cfg, {}, result) is None
    assert (tmp_path / "README.md").read_text() == "my own notes\n"

    (tmp_path / "README.md").unlink()
    assert write_card(tmp_path, "sft", cfg, {}, result) is not None
    result.eval = {"loss": 0.25}  # a rerun into the same folder replaces alignkit's own card
    write_card(tmp_path, "sft", cfg, {}, result)
    _, body = parse(tmp_path / "README.md")
    assert table(body, "Evaluation") == {"loss": "0.25"}
