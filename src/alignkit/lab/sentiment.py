"""The sentiment lab: review-writing prompts whose held-out part is really new, and a small review corpus
for the `--quick` tiny policy.

Prompts combine a template, a genre, an aspect and an invented film title. Titles are drawn from disjoint
word pools for the training and held-out splits, so no held-out prompt names a film seen in training.
"""

from __future__ import annotations

import random

TEMPLATES = [
    "Write a short review of the {genre} film \"{title}\".",
    "In two sentences, review the {genre} movie \"{title}\", focusing on its {aspect}.",
    "What did you think of \"{title}\", the new {genre} film? Comment on the {aspect}.",
    "Give your honest opinion of the {genre} picture \"{title}\" and its {aspect}.",
    "Review \"{title}\" ({genre}) for a film magazine in one paragraph.",
    "Describe your experience watching \"{title}\", a {genre} film, in a few sentences.",
]
GENRES = ["drama", "comedy", "thriller", "science-fiction", "horror", "romance", "animated", "documentary",
          "western", "war", "musical", "mystery", "fantasy", "crime", "family", "historical"]
ASPECTS = ["acting", "screenplay", "soundtrack", "cinematography", "pacing", "ending", "characters", "dialogue",
           "special effects", "direction"]
# two disjoint pools: titles of training prompts use the first, held-out prompts the second
TITLE_WORDS = (
    ["Silent", "Crimson", "Broken", "Golden", "Hidden", "Midnight", "Northern", "Paper", "Electric", "Winter",
     "Lost", "Iron", "Glass", "Velvet", "Burning", "Distant"],
    ["River", "Empire", "Garden", "Signal", "Harbor", "Mirror", "Orchard", "Lantern", "Compass", "Shadow",
     "Canyon", "Frontier", "Meadow", "Circuit", "Tide", "Summit"],
)
NOUNS = ["Dreams", "Letters", "Roads", "Voices", "Hearts", "Cities", "Echoes", "Storms", "Promises", "Machines",
         "Islands", "Secrets", "Kings", "Rivers", "Stars", "Doors"]


def prompt_capacity() -> int:
    """How many distinct prompts `review_prompts` can make for one split."""
    titles = len(TITLE_WORDS[0]) * len(NOUNS)
    return sum(titles * (len(GENRES) if "{genre}" in t else 1) * (len(ASPECTS) if "{aspect}" in t else 1)
               for t in TEMPLATES)


def review_prompts(n: int, *, split: str, seed: int = 0) -> list[str]:
    """`n` distinct review-writing prompts for "train" or "heldout" (disjoint film titles)."""
    pool = TITLE_WORDS[0] if split == "train" else TITLE_WORDS[1]
    if split not in ("train", "heldout"):
        raise ValueError("split must be 'train' or 'heldout'")
    if n > prompt_capacity() // 2:  # beyond half of them, rejection sampling slows down: refuse instead
        raise ValueError(f"cannot make {n} distinct prompts (at most {prompt_capacity() // 2})")
    rng = random.Random(f"{seed}-{split}")
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        title = f"{rng.choice(pool)} {rng.choice(NOUNS)}"
        prompt = rng.choice(TEMPLATES).format(title=title, genre=rng.choice(GENRES), aspect=rng.choice(ASPECTS))
        if prompt not in seen:
            seen.add(prompt)
            out.append(prompt)
    return out


POSITIVE = "wonderful brilliant moving beautiful delightful superb charming great excellent lovely".split()
NEGATIVE = "boring dull terrible awful weak tedious dreadful poor bad disappointing".split()
NEUTRAL = "film story acting plot music ending scenes camera cast pace".split()


def quick_reviews(n: int, seed: int = 0) -> list[str]:
    """Short synthetic reviews of mixed sentiment (about a third each positive, negative, neutral-ish), the
    demonstrations that teach the `--quick` tiny policy to write something a sentiment scorer can read."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        mood = rng.choice([POSITIVE, NEGATIVE, NEUTRAL])
        words = [rng.choice(NEUTRAL if rng.random() < 0.4 else mood) for _ in range(rng.randint(4, 9))]
        out.append("The " + " ".join(words) + ".")
    return out
