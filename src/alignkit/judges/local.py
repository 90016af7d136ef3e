"""A local causal LM as judge: the probabilities of the answer letters A and B after the rubric, read in one
forward pass (no text is generated or parsed). The rubric is the user message of the model's chat template, or,
for a model without one, plain text followed by "Answer:".

P(first better) = P(A) / (P(A) + P(B)), where P(A) sums the letter's single-token spellings ("A" and " A") at
the first answer position. P(A) + P(B), the answer mass, says how much of its probability the judge put on an
answer at all: a judge that barely does is answering another question."""

from __future__ import annotations

import json

import torch

from alignkit.data.collate import pack_responses
from alignkit.data.tokenize import Encoder
from alignkit.errors import AlignkitError
from alignkit.judges.verdicts import Verdict
from alignkit.models.load import folder_stamp, load_causal_lm, load_tokenizer, resolve_model
from alignkit.models.logprobs import capabilities, score

LETTERS = ("A", "B")


def letter_ids(tok, letter: str) -> list[int]:
    """The token ids that spell `letter` alone, with and without a leading space."""
    ids = {tuple(tok(s, add_special_tokens=False)["input_ids"]) for s in (letter, " " + letter)}
    return sorted(i[0] for i in ids if len(i) == 1)


class LocalJudge:
    def __init__(self, name: str, *, max_length: int = 1024):
        self.name = name
        self.tok = load_tokenizer(name)
        self.model = load_causal_lm(name).eval()
        self.chat = bool(getattr(self.tok, "chat_template", None))
        self.enc = Encoder(self.tok, max_length=max_length + 1, max_prompt_length=max_length, chat_template=self.chat)
        self.answers = [letter_ids(self.tok, x) for x in LETTERS]
        if not all(self.answers):
            raise AlignkitError(f"judge '{name}': its tokenizer has no single token for the letter "
                                f"{LETTERS[self.answers.index([])]}, so its answer cannot be read")
        self.id = "local:" + json.dumps(folder_stamp(resolve_model(name)))
        self.chunk = 16  # presentations per forward (and between cache writes)

    def prompt_ids(self, text: str) -> list[int]:
        """The judge's input: the filled rubric as a user turn (or as text ending in "Answer:"); one longer than
        the length limit keeps its end (the question and the responses), counted in `enc.counts`."""
        return self.enc.truncate_prompt(self.enc.prompt_ids(text if self.chat else text + "\nAnswer:"))

    @torch.inference_mode()
    def judge(self, texts: list[str]) -> list[Verdict]:
        """Verdicts for `texts` (filled rubrics). Neighbours (texts 2i and 2i+1: judge_pairs gives a pair's two
        orders side by side) share their common token prefix, the rubric's head and the request, laid out once in
        a packed batch; the next-token distribution is read at each input's last token only."""
        ids = [self.prompt_ids(t) for t in texts]
        prefixes, suffixes = [], []
        for i in range(0, len(ids), 2):
            group = ids[i : i + 2]
            n = _common_prefix(group) if len(group) == 2 else 0
            n = min([n, *(len(x) - 1 for x in group)])  # every suffix keeps at least its last token
            prefixes += [group[0][:n]] * len(group)
            suffixes += [x[n:] for x in group]
        packed = capabilities(self.model).packing is None
        logp = []
        for i in range(0, len(ids), self.chunk):
            batch = pack_responses(prefixes[i : i + self.chunk], suffixes[i : i + self.chunk], self.tok.pad_token_id,
                                   one_per_row=not packed)
            logp.append(score(self.model, batch, "next").next.double())
        probs = torch.cat(logp).exp()
        p_a, p_b = (probs[:, torch.tensor(x)].sum(-1) for x in self.answers)
        return [Verdict(float(a / (a + b)) if a + b > 0 else 0.5, float(a + b)) for a, b in zip(p_a, p_b, strict=True)]


def _common_prefix(rows: list[list[int]]) -> int:
    n = 0
    for column in zip(*rows, strict=False):
        if len(set(column)) > 1:
            break
        n += 1
    return n
