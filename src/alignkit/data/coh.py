"""Chain of Hindsight sequence builder (Liu et al. 2023, docs/algorithms.md).

A preference pair becomes text sequences that carry feedback in language. With the default phrases:
- single:  `{prompt} A helpful answer: {y_w}`  and  `{prompt} An unhelpful answer: {y_l}`
- chained: `{prompt} An unhelpful answer: {y_l} A helpful answer: {y_w}`  and the reverse order.
The first phrase of a sequence ends the prompt (`coh_prompt`): after a plain-text prompt, or at the end of
the last user message of a chat prompt, so that the response still opens the assistant's turn. What follows
the prompt is a list of (text, trained) segments: responses are trained on, feedback phrases are not (the
prompt is masked too). At inference the prompt ends with the positive phrase.
"""

from __future__ import annotations

from alignkit.data.records import Text

FORMS = ("single", "chained")


def coh_sequences(chosen: str, rejected: str, *, positive: str, negative: str,
                  forms: tuple[str, ...] | list[str] = FORMS) -> list[tuple[str, list[tuple[str, bool]]]]:
    """The CoH sequences of one pair: (phrase that ends the prompt, (text, trained) segments after it)."""
    unknown = set(forms) - set(FORMS)
    if unknown:
        raise ValueError(f"unknown Chain of Hindsight form(s) {sorted(unknown)}; choose from {list(FORMS)}")
    seqs: list[tuple[str, list[tuple[str, bool]]]] = []
    if "single" in forms:
        seqs += [(positive, [(chosen, True)]), (negative, [(rejected, True)])]
    if "chained" in forms:
        seqs += [(negative, [(rejected, True), (positive, False), (chosen, True)]),
                 (positive, [(chosen, True), (negative, False), (rejected, True)])]
    return seqs


def coh_prompt(prompt: Text, phrase: str) -> Text:
    """`prompt` ending with a feedback phrase: appended to a text prompt, or to the content of the last user
    message of a chat prompt (a new copy; the input is not changed)."""
    if isinstance(prompt, str):
        return prompt + phrase
    messages = [dict(m) for m in prompt]
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages) - 1)
    messages[last]["content"] = messages[last]["content"] + phrase
    return messages
