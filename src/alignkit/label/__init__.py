"""Collecting preferences from people: a labeling web app over a database, and the commands around it.

The flow (`alignkit label ...`): `import` items from data files (pairs, K-response sets from `alignkit sample`,
or single responses to judge good or bad) into a database (SQLite file or PostgreSQL URL, `db.py`); `invite`
annotators (each gets a personal link; only a hash of its token is stored); `serve` the app (`app.py`) where
each item is judged by R distinct annotators (`store.py`); `status` shows progress, per-annotator counts,
gold-item accuracy and agreement; `export` writes pairs with hard and soft labels, rankings, KTO data
(good / bad verdicts) and raw votes in the formats the trainers read. This package talks to the rest of alignkit only through those data files.
"""

from urllib.parse import urlsplit

from alignkit.errors import ConfigError

DEFAULT_DB = "label.db"  # the database of every `alignkit label` command unless --db names another


def check_base_url(url: str) -> str:
    """`url` (the app's address as annotators reach it, e.g. https://labels.example) without its trailing
    slash; ConfigError when it is not an http(s) address with a host and nothing else but a path."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise ConfigError(f"--url {url!r}: not a valid address ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--url {url!r}: expected the app's address as annotators reach it, "
                          "like https://labels.example or http://192.0.2.7:8000")
    if any(c in "?#@" or ord(c) <= 32 or ord(c) == 127 for c in text):
        raise ConfigError(f"--url {url!r}: give only the address (scheme, host, port, optional path), "
                          "without a query, fragment, user name, spaces or control characters")
    return text.rstrip("/")
