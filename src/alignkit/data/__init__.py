"""The data layer: record types, readers for files / datasets / hub ids, and validating loaders.

    from alignkit.data import load_pairs
    pairs, report = load_pairs("../shared/data/hh-rlhf/harmless-base-test.jsonl.gz")
    print(report.summary())

Tokenisation (`alignkit.data.tokenize`) and collators (`alignkit.data.collate`, which needs torch) are
imported from their own modules, so that importing this package stays light.
"""

from alignkit.data.formats import detect_format, load_kto, load_pairs, load_prompts, load_rankings, load_sft
from alignkit.data.readers import iter_raw
from alignkit.data.records import (
    KTOExample,
    LoadReport,
    Message,
    PreferencePair,
    Ranking,
    SFTExample,
    Text,
    Where,
)
from alignkit.data.votes import aggregate_votes, agreement_report, fleiss_kappa, pair_from_votes

__all__ = [
    "KTOExample",
    "LoadReport",
    "Message",
    "PreferencePair",
    "Ranking",
    "SFTExample",
    "Text",
    "Where",
    "agreement_report",
    "aggregate_votes",
    "detect_format",
    "fleiss_kappa",
    "iter_raw",
    "load_kto",
    "load_pairs",
    "load_rankings",
    "load_sft",
    "load_prompts",
    "pair_from_votes",
]
