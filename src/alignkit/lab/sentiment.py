"""The sentiment lab: review-writing prompts whose held-out part is really new, and a small review corpus
for the `--quick` tiny policy.

Training prompts ask for film reviews: a template, a genre, an aspect and an invented film title. Held-out
prompts are new in every part, so the demo's evaluation measures what a policy does on requests it never
trained on: other phrasings (their own templates), other subjects (TV series, novels, albums, games, ...),
other aspects, and titles from a disjoint word pool.
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

# held-out prompts: their own phrasings, subjects other than films, and other aspects
HELDOUT_TEMPLATES = [
    "Tell a friend what you made of the {genre} \"{title}\".",
    "Share your thoughts on the {genre} \"{title}\", especially its {aspect}.",
    "How would you rate the {genre} \"{title}\"? Explain briefly.",
    "Write a brief critique of \"{title}\" ({genre}), mentioning the {aspect}.",
    "Was \"{title}\" worth it? Give your verdict on this {genre}.",
    "Post a short comment about the {genre} \"{title}\" for other fans, touching on its {aspect}.",
]
SUBJECTS = ["TV series", "novel", "album", "stage play", "video game", "podcast", "documentary series",
            "comic book", "short film", "opera", "concert", "board game"]
HELDOUT_ASPECTS = ["story", "writing", "performances", "music", "visual style", "humour", "length",
                   "world-building", "atmosphere", "finale"]

SPLITS = {  # templates, genres (or subjects), aspects, title words
    "train": (TEMPLATES, GENRES, ASPECTS, TITLE_WORDS[0]),
    "heldout": (HELDOUT_TEMPLATES, SUBJECTS, HELDOUT_ASPECTS, TITLE_WORDS[1]),
}


def prompt_capacity(split: str = "train") -> int:
    """How many distinct prompts `review_prompts` can make for one split."""
    templates, genres, aspects, words = SPLITS[split]
    titles = len(words) * len(NOUNS)
    return sum(titles * (len(genres) if "{genre}" in t else 1) * (len(aspects) if "{aspect}" in t else 1)
               for t in templates)


def review_prompts(n: int, *, split: str, seed: int = 0) -> list[str]:
    """`n` distinct review-writing prompts for "train" (films) or "heldout" (other phrasings, subjects, aspects
    and title words)."""
    if split not in SPLITS:
        raise ValueError("split must be 'train' or 'heldout'")
    templates, genres, aspects, pool = SPLITS[split]
    if n > prompt_capacity(split) // 2:  # beyond half of them, rejection sampling slows down: refuse instead
        raise ValueError(f"cannot make {n} distinct prompts (at most {prompt_capacity(split) // 2})")
    rng = random.Random(f"{seed}-{split}")
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        title = f"{rng.choice(pool)} {rng.choice(NOUNS)}"
        prompt = rng.choice(templates).format(title=title, genre=rng.choice(genres), aspect=rng.choice(aspects))
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
