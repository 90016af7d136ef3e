"""The arithmetic task of `alignkit demo --task arithmetic`: small word problems with one right number, a verifiable
reward (exact match of the final number), training and held-out problems that never coincide.

A problem is a template filled with a name, an object and two numbers. `solve` recovers the answer from the
problem's text alone, by matching it against the templates, so that the reward is a plain function of (prompt,
response), as every reward source is: `alignkit.lab.arithmetic:exact_match`.
"""

from __future__ import annotations

import json
import random
import re

NAMES = ("Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jack", "Kate", "Leo", "Mia", "Noah",
         "Olivia", "Paul", "Rosa", "Sam", "Tara", "Umar", "Vera", "Will", "Yara", "Zoe")
OBJECTS = ("apples", "books", "coins", "pencils", "stickers", "marbles", "cookies", "stamps", "shells", "cards",
           "balloons", "candles", "buttons", "flowers", "toys")
# (template, operation): {n} a name, {o} an object, {a} and {b} numbers
TEMPLATES = (
    ("{n} has {a} {o} and gets {b} more. How many {o} does {n} have now?", "+"),
    ("{n} had {a} {o} and gave away {b}. How many {o} does {n} have left?", "-"),
    ("There are {a} {o} in a box. {n} puts in {b} more. How many {o} are in the box?", "+"),
    ("{n} buys {a} bags with {b} {o} in each bag. How many {o} does {n} buy?", "*"),
    ("{n} has {a} {o}. A friend has {b} fewer. How many {o} does the friend have?", "-"),
    ("{n} collects {a} {o} on Monday and {b} on Tuesday. How many {o} is that in all?", "+"),
)
INSTRUCTION = " Give only the final number."
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def _regex(template: str) -> re.Pattern:
    pattern = re.escape(template + INSTRUCTION)
    for field, rx in (("n", r"[A-Z][a-z]+"), ("o", r"[a-z]+"), ("a", r"\d+"), ("b", r"\d+")):
        token = re.escape("{" + field + "}")
        first = f"(?P<{field}>{rx})"
        pattern = pattern.replace(token, first, 1).replace(token, f"(?P={field})")
    return re.compile(pattern + r"$")


_SOLVERS = [(_regex(t), op) for t, op in TEMPLATES]


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def make_problem(rng: random.Random) -> tuple[str, int]:
    template, op = rng.choice(TEMPLATES)
    if op == "*":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
    elif op == "-":
        a = rng.randint(5, 20)
        b = rng.randint(1, a - 1)
    else:
        a, b = rng.randint(2, 20), rng.randint(2, 20)
    text = template.format(n=rng.choice(NAMES), o=rng.choice(OBJECTS), a=a, b=b) + INSTRUCTION
    return text, _apply(op, a, b)


def problems(n_train: int, n_heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """Distinct training and held-out problems (no text in both)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    for _ in range(100 * (n_train + n_heldout)):
        text, _ = make_problem(rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
            if len(out) == n_train + n_heldout:
                break
    if len(out) < n_train + n_heldout:
        raise ValueError(f"could not make {n_train + n_heldout} distinct problems")
    return out[:n_train], out[n_train:]


def solve(problem: str) -> int | None:
    """The answer of a problem made here (`problems`), or None for any other text."""
    for rx, op in _SOLVERS:
        m = rx.match(problem.strip())
        if m:
            return _apply(op, int(m["a"]), int(m["b"]))
    return None


def final_number(response: str) -> float | None:
    """The last number written in a response (thousands commas allowed), or None."""
    found = NUMBER.findall(response)
    return float(found[-1].replace(",", "")) if found else None


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):  # chat messages: the problem is the last user message
        return next(m["content"] for m in reversed(prompt) if m["role"] == "user")
    if isinstance(prompt, str) and prompt.startswith("["):
        try:
            return _prompt_text(json.loads(prompt))
        except (ValueError, TypeError, StopIteration):
            return prompt
    return prompt


def exact_match(prompts: list, responses: list[str]) -> list[float]:
    """1.0 where a response's last number is the problem's answer, else 0.0. A prompt that is not a problem of
    this task raises ValueError (a reward that silently scored 0 would hide the mistake)."""
    out = []
    for prompt, response in zip(prompts, responses, strict=True):
        answer = solve(_prompt_text(prompt))
        if answer is None:
            raise ValueError(f"not an arithmetic problem of alignkit.lab.arithmetic: {str(prompt)[:80]!r}")
        got = final_number(response)
        out.append(float(got is not None and got == answer))
    return out
