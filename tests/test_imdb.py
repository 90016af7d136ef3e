"""IMDb mode: review files, the gold classifier as a reward, review-prefix prompts, and the quick demo on the
real IMDb files in ../shared/data/imdb (skipped when they are absent)."""

import gzip
import json
from pathlib import Path

import pytest

from alignkit.cli.main import main
from alignkit.errors import AlignkitError, DataError
from alignkit.lab import imdb
from alignkit.models.load import load_tokenizer
from alignkit.rollout.rewards import CallableReward
from conftest import write_jsonl

IMDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "imdb"
POS = ["a wonderful moving film, brilliant acting", "great fun and a lovely story", "superb, I loved it"]
NEG = ["a boring dull mess, awful acting", "terrible plot and weak dialogue", "dreadful, I hated it"]


def _reviews_dir(tmp_path: Path) -> Path:
    d = tmp_path / "imdb"
    d.mkdir()
    for split in ("train", "test"):
        rows = [{"text": t + "<br /><br />The end.", "label": 1} for t in POS] + [{"text": t, "label": 0} for t in NEG]
        with gzip.open(d / f"{split}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows * 10)
    return d


def test_reviews_read_and_bad_records_name_their_line(tmp_path):
    d = _reviews_dir(tmp_path)
    texts, labels = imdb.read_reviews(str(d), "train")
    assert len(texts) == 60 and sum(labels) == 30
    assert texts[0] == POS[0] + " The end."  # HTML line breaks become spaces
    bad = tmp_path / "bad"
    bad.mkdir()
    write_jsonl(bad / "train.jsonl", [{"text": "fine", "label": 1}, {"text": "x", "label": 2}])
    with pytest.raises(DataError, match=r"train.jsonl:2: field 'label': expected 0 or 1, got 2"):
        imdb.read_reviews(str(bad), "train")
    write_jsonl(bad / "train.jsonl", [{"text": "  ", "label": 1}])
    with pytest.raises(DataError, match=r"train.jsonl:1: field 'text'"):
        imdb.read_reviews(str(bad), "train")
    with pytest.raises(AlignkitError, match="no test.jsonl.gz"):
        imdb.read_reviews(str(bad), "test")


def test_gold_classifier_scores_prompt_plus_response(tmp_path):
    d = _reviews_dir(tmp_path)
    info = imdb.train_gold(str(d), tmp_path / "gold.joblib")
    assert info["test_accuracy"] == 1.0 and info["train"] == 60
    gold = CallableReward(f"sklearn:{tmp_path / 'gold.joblib'}")
    s = gold(["This film was", [{"role": "user", "content": "awful awful awful"}]], ["wonderful, superb", "superb"])
    assert s[0] > 0.5 and s[1] > 0.5  # after chat messages only the response is scored
    s_text = gold(["awful awful awful dull boring"], ["superb"])  # a text prompt is part of what is scored
    assert s_text[0] < s[1]
    with pytest.raises(AlignkitError, match="file not found"):
        CallableReward(f"sklearn:{tmp_path / 'missing.joblib'}")


def test_prefix_prompts_are_two_to_eight_tokens(tiny_model):
    tok = load_tokenizer(tiny_model)
    texts = [f"review number {i} says the film was quite good and the acting fine overall" for i in range(50)]
    prompts = imdb.prefix_prompts(texts, tok, 40, seed=0)
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert len(prompts) == 40 and min(lengths) >= 2 and max(lengths) <= 8 and len(set(lengths)) > 3
    assert all(any(t.startswith(p) for t in texts) for p in prompts)  # each is the beginning of a review
    rows = imdb.continuation_examples(texts, tok, 10, seed=0, length=5)
    assert len(rows) == 10 and all(r["prompt"] and r["completion"] for r in rows)


@pytest.mark.skipif(not (IMDB / "train.jsonl.gz").exists(), reason="../shared/data/imdb not present")
def test_quick_imdb_demo_pipeline(tmp_path):
    """The IMDb plumbing on the real files: gold classifier accuracy on the 25,000 test reviews, raw-text
    review-prefix prompts, panel labels that follow the gold, a trained DPO policy evaluated against the
    reference. (The tiny model writes word salad the classifier barely reacts to, so whether alignment moves
    the gold is measured on SmolLM2 in docs/benchmarks.md, not asserted here.)"""
    out = tmp_path / "imdb-demo"
    assert main(["demo", "--quick", "--task", "imdb", "--data", str(IMDB), "--methods", "dpo",
                 "--output-dir", str(out), "--no-progress"]) == 0
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["gold_classifier"]["test_accuracy"] > 0.85 and results["gold_classifier"]["test"] == 25000
    prompts = [json.loads(line)["prompt"] for line in (out / "prompts" / "heldout.jsonl").open()]
    assert len(prompts) == 48 and all(isinstance(p, str) and p for p in prompts)  # raw text, no chat template
    votes = [json.loads(line) for line in (out / "labels" / "votes.jsonl").open()]
    clear = [v for v in votes if abs(v["gold_a"] - v["gold_b"]) > 0.2]
    agree = [(v["votes"].count("a") > v["votes"].count("b")) == (v["gold_a"] > v["gold_b"]) for v in clear]
    assert len(clear) >= 10 and sum(agree) / len(agree) > 0.8
    assert results["gold"].startswith("sklearn:") and results["models"]["dpo"]["kl"] > 0.1
