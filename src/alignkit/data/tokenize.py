"""Tokenisation with prompt masking, EOS, chat templates and a counted truncation policy.

- Plain-string prompts and responses are tokenised as they are (set `chat_template=True` to wrap a string
  prompt as one user message); the prompt keeps the tokenizer's own special tokens (e.g. BOS).
- Message lists go through the tokenizer's chat template: the prompt is rendered with the generation prompt,
  each assistant turn is what the template adds for it, cut right after the EOS token (the trailing newline
  some templates add belongs to the next turn).
- Every response ends with EOS (appended when the template or text does not already end with it).
- User text is text: a string that spells a special token ("<|im_end|>", "<pad>") is encoded as those
  characters, never as the control token, so a record cannot end its response early or inject padding (the
  EOS text at the very end of a string response is the one exception: that response simply ends there). A
  chat template's own special tokens stay special; one spelled inside a message's content is text.
- Truncation: a prompt over `max_prompt_length` tokens keeps its END; then a response that would pass
  `max_length` is cut at its end. Each is counted in `Encoder.counts` ("prompt_truncated",
  "response_truncated") so the run can report it.

Outputs are lists of token ids plus a 0/1 response mask (1 = a token the loss trains on or scores).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter

from alignkit.data.records import PreferencePair, SFTExample, Text
from alignkit.errors import AlignkitError


class Encoder:
    """Turns records into token ids for one tokenizer and one length policy."""

    def __init__(self, tokenizer, *, max_length: int = 512, max_prompt_length: int = 256, chat_template: bool = False):
        if max_prompt_length >= max_length:
            raise AlignkitError(
                f"max_prompt_length ({max_prompt_length}) must be smaller than max_length ({max_length})"
            )
        self.tok = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.chat_template = chat_template
        self.eos_id = tokenizer.eos_token_id
        self.eos = tokenizer.eos_token
        self.counts: Counter[str] = Counter()
        specials = {i: t.content for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        self._special_ids = set(specials)
        texts = sorted(set(specials.values()), key=len, reverse=True)
        self._special_text = re.compile("|".join(map(re.escape, texts))) if texts else None  # spells a special token

    # ---- text rendering -------------------------------------------------------------------------------
    def _template(self, messages, *, generation_prompt: bool) -> str:
        if not getattr(self.tok, "chat_template", None):
            raise AlignkitError("chat messages given, but the tokenizer has no chat template")
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _render(self, messages, *, generation_prompt: bool) -> tuple[str, list[tuple[int, int]]]:
        """The template's text, and where in it sit the message contents that spell a special token: user text,
        which `_template_ids` keeps literal. Found by rendering numbered placeholders in their place; a template
        that changes, drops or repeats such a content leaves them unmarked."""
        text = self._template(messages, generation_prompt=generation_prompt)
        marked = [i for i, m in enumerate(messages) if self._special_text and self._special_text.search(m["content"])]
        if not marked:
            return text, []
        held = [{**m, "content": f"\ue000{i}\ue000"} if i in marked else m for i, m in enumerate(messages)]
        parts = re.split("\ue000(\\d+)\ue000", self._template(held, generation_prompt=generation_prompt))
        if parts[1::2] != [str(i) for i in marked]:
            return text, []
        parts[1::2] = [messages[i]["content"] for i in marked]
        if "".join(parts) != text:
            return text, []
        ends = list(itertools.accumulate(map(len, parts)))
        return text, [(ends[k] - len(parts[k]), ends[k]) for k in range(1, len(parts), 2)]

    def _as_messages(self, prompt: Text) -> list | None:
        if isinstance(prompt, list):
            return prompt
        return [{"role": "user", "content": prompt}] if self.chat_template else None

    def text_ids(self, text: str, *, special: bool = False) -> list[int]:
        """Token ids of user text, taken literally (special-token text stays text); `special` adds the tokenizer's
        own special tokens, such as BOS."""
        return self.tok(text, add_special_tokens=special, split_special_tokens=True)["input_ids"]

    def _template_ids(self, text: str, spans: list[tuple[int, int]], start: int = 0) -> list[int]:
        """Token ids of text the template rendered (`text` starts at `start` of the rendering whose user-text
        `spans` `_render` gave): the template's own special tokens are special, those in user text are text."""
        spans = [(a - start, b - start) for a, b in spans if b > start and a < start + len(text)]
        if not spans:
            return self.tok(text, add_special_tokens=False)["input_ids"]
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = []
        for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            user = i in self._special_ids and any(s <= a and b <= e for s, e in spans)
            ids += self.text_ids(text[a:b]) if user else [i]
        return ids

    def _cut_after_eos(self, text: str) -> str:
        i = text.rfind(self.eos) if self.eos else -1
        return text[: i + len(self.eos)] if i >= 0 else text

    def prompt_ids(self, prompt: Text) -> list[int]:
        """Token ids of the prompt (untruncated)."""
        messages = self._as_messages(prompt)
        if messages is None:
            return self.text_ids(prompt, special=True)
        return self._template_ids(*self._render(messages, generation_prompt=True))

    def response_ids(self, prompt: Text, response: Text) -> list[int]:
        """Token ids of the response, ending with EOS (untruncated)."""
        messages = self._as_messages(prompt)
        if isinstance(response, str):
            response = response.removesuffix(self.eos or "")  # its own EOS is the one appended
        if messages is None:
            if isinstance(response, list):
                raise AlignkitError("a chat-message response needs a chat-message prompt")
            ids = self.text_ids(response)
        else:
            reply = response if isinstance(response, list) else [{"role": "assistant", "content": response}]
            head = self._template(messages, generation_prompt=True)
            full, spans = self._render(messages + reply, generation_prompt=False)
            if not full.startswith(head):
                raise AlignkitError("the chat template does not render the prompt as a prefix of the conversation")
            ids = self._template_ids(self._cut_after_eos(full[len(head):]), spans, len(head))
        if not ids or ids[-1] != self.eos_id:
            ids = ids + [self.eos_id]
        return ids

    # ---- truncation -----------------------------------------------------------------------------------
    def truncate_prompt(self, ids: list[int]) -> list[int]:
        if len(ids) > self.max_prompt_length:
            self.counts["prompt_truncated"] += 1
            return ids[-self.max_prompt_length:]
        return ids

    def _truncate_response(self, prompt: list[int], ids: list[int]) -> list[int]:
        room = self.max_length - len(prompt)
        if len(ids) > room:
            self.counts["response_truncated"] += 1
            return ids[:room]
        return ids

    # ---- records --------------------------------------------------------------------------------------
    def encode(self, prompt: Text, response: Text) -> tuple[list[int], list[int]]:
        """(input_ids, response_mask) of prompt + response, truncated by the policy."""
        p = self.truncate_prompt(self.prompt_ids(prompt))
        r = self._truncate_response(p, self.response_ids(prompt, response))
        return p + r, [0] * len(p) + [1] * len(r)

    def encode_pair(self, pair: PreferencePair) -> dict:
        """Prompt ids shared by both responses, and each response's ids."""
        p = self.truncate_prompt(self.prompt_ids(pair.prompt))
        chosen = self._truncate_response(p, self.response_ids(pair.prompt, pair.chosen))
        rejected = self._truncate_response(p, self.response_ids(pair.prompt, pair.rejected))
        return {"prompt": p, "chosen": chosen, "rejected": rejected, "label": pair.label, "margin": pair.margin}

    def encode_responses(self, prompt: Text, responses: list[Text]) -> dict:
        """A prompt with several responses (a ranking, best first)."""
        p = self.truncate_prompt(self.prompt_ids(prompt))
        return {"prompt": p, "responses": [self._truncate_response(p, self.response_ids(prompt, r)) for r in responses]}

    def encode_sft(self, ex: SFTExample) -> tuple[list[int], list[int]]:
        """A demonstration: prompt + completion, or a chat whose assistant turns are all trained on."""
        if ex.messages is None:
            return self.encode(ex.prompt or "", ex.completion)
        ids: list[int] = []
        mask: list[int] = []
        done = ""  # text already turned into tokens
        for i, m in enumerate(ex.messages):
            if m["role"] != "assistant":
                continue
            head, head_spans = self._render(ex.messages[:i], generation_prompt=True)
            full, spans = self._render(ex.messages[: i + 1], generation_prompt=False)
            full = self._cut_after_eos(full)
            if not (head.startswith(done) and full.startswith(head)):
                raise AlignkitError("the chat template does not render earlier turns as a prefix of later ones")
            ctx = self._template_ids(head[len(done):], head_spans, len(done))
            reply = self._template_ids(full[len(head):], spans, len(head))
            if not reply or reply[-1] != self.eos_id:
                reply = reply + [self.eos_id]
            ids += ctx + reply
            mask += [0] * len(ctx) + [1] * len(reply)
            done = full
        if len(ids) > self.max_length:
            self.counts["response_truncated"] += 1
            ids, mask = ids[: self.max_length], mask[: self.max_length]
        return ids, mask
