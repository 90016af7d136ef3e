"""Chain of Hindsight sequence builder (Liu et al. 2023, docs/algorithms.md).

A preference pair becomes text sequences that carry feedback in language. With the default phrases:
- single:  `{prompt} A helpful answer: {y_w}`  and  `{prompt} An unhelpful answer: {y_l}`
- chained: `{prompt} An unhelpful answer: {y_l} A helpful answer: {y_w}`  and the reverse order.
Each sequence is a list of (text, trained) segments after the prompt: responses are trained on, feedback
phrases are not (the prompt is masked too). At inference the prompt ends with the positive phrase.
"""

from __future__ import annotations

FORMS = ("single", "chained")


def coh_segments(chosen: str, rejected: str, *, positive: str, negative: str,
                 forms: tuple[str, ...] | list[str] = FORMS) -> list[list[tuple[str, bool]]]:
    """The CoH sequences of one pair, as (text, trained) segments that follow the prompt."""
    unknown = set(forms) - set(FORMS)
    if unknown:
        raise ValueError(f"unknown Chain of Hindsight form(s) {sorted(unknown)}; choose from {list(FORMS)}")
    good, bad = (positive, False), (negative, False)
    seqs: list[list[tuple[str, bool]]] = []
    if "single" in forms:
        seqs += [[good, (chosen, True)], [bad, (rejected, True)]]
    if "chained" in forms:
        seqs += [[bad, (rejected, True), good, (chosen, True)], [good, (chosen, True), bad, (rejected, True)]]
    return seqs


def coh_prompt(prompt: str, positive: str) -> str:
    """The inference prompt of a CoH-trained model: the prompt followed by the positive feedback phrase."""
    return prompt + positive
