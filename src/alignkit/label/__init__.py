"""Collecting preferences from people: a labeling web app over a database, and the commands around it.

The flow (`alignkit label ...`): `import` items from data files (pairs, or K-response sets from
`alignkit sample`) into a database (SQLite file or PostgreSQL URL, `db.py`); `invite` annotators (each gets a
personal link; only a hash of its token is stored); `serve` the app (`app.py`) where each item is judged by R
distinct annotators (`store.py`); `status` shows progress, per-annotator counts, gold-item accuracy and
agreement; `export` writes pairs with hard and soft labels, rankings and raw votes in the formats the
trainers read. This package talks to the rest of alignkit only through those data files.
"""

DEFAULT_DB = "label.db"  # the database of every `alignkit label` command unless --db names another
