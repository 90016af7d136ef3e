"""The labeling store: its tables (SQLAlchemy Core), its schema version, and opening it by URL.

A database is SQLite (a file path or `sqlite:///path`, the embedded default) or PostgreSQL
(`postgresql://user:pass@host:port/name`, through psycopg 3). Every statement binds its parameters; no SQL
is built from strings.

Tables (texts are stored as JSON: a string or a list of chat messages):

- `schema_version`: one row, the version of the tables below. `open_db` creates the tables in an empty
  database, upgrades an older version step by step (`MIGRATIONS`) and refuses a newer one.
- `settings`: key/value pairs; `csrf_secret` (random, made once) signs the forms' CSRF tokens.
- `annotators`: name, SHA-256 of the personal token (the token itself is never stored), admin flag.
- `items`: one task: `kind` "pair" (2 responses), "ranking" (K > 2) or "thumbs" (1 response, judged good or
  bad), prompt, responses in their canonical order (response a = index 0), `gold` (the known answer: "a",
  "b" or "tie" for a pair, the canonical indices best first for a ranking, "good" or "bad" for a thumbs
  item; null for an ordinary item), `replicas` R (distinct annotators wanted), the file and line it came
  from, and a hash of its content (an item is stored once).
- `assignments`: an item given to one annotator, with the order its responses were shown in (canonical
  index at each screen position, randomised) and a random nonce that the task's form carries. Status
  "open", "done" or "skipped". UNIQUE(item, annotator): nobody sees an item twice.
- `votes`: one per finished assignment: the choice in canonical orientation ("a" / "b" / "tie" for a pair,
  canonical indices best first for a ranking, "good" / "bad" for a thumbs item), the shown order, optional
  confidence (1-3) and reason, time.
  `idempotency_key` (the assignment's nonce) is UNIQUE, so a form sent twice stores one vote.
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from alignkit.errors import AlignkitError, ConfigError

SCHEMA_VERSION = 1

metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

settings = Table(
    "settings", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

annotators = Table(
    "annotators", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("is_admin", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

items = Table(
    "items", metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(8), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("responses", Text, nullable=False),
    Column("gold", Text),
    Column("replicas", Integer, nullable=False),
    Column("source", Text, nullable=False),
    Column("content_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

assignments = Table(
    "assignments", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("annotator_id", Integer, ForeignKey("annotators.id"), nullable=False),
    Column("nonce", String(64), nullable=False, unique=True),
    Column("shown_order", Text, nullable=False),
    Column("status", String(8), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("item_id", "annotator_id"),
    Index("ix_assignments_item_status", "item_id", "status"),
    Index("ix_assignments_annotator_status", "annotator_id", "status"),
)

votes = Table(
    "votes", metadata,
    Column("id", Integer, primary_key=True),
    Column("assignment_id", Integer, ForeignKey("assignments.id"), nullable=False, unique=True),
    Column("idempotency_key", String(64), nullable=False, unique=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("annotator_id", Integer, ForeignKey("annotators.id"), nullable=False),
    Column("shown_order", Text, nullable=False),
    Column("choice", Text, nullable=False),
    Column("confidence", Integer),
    Column("reason", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("item_id", "annotator_id"),
)

# version -> function(connection) that upgrades the tables from that version to the next one
MIGRATIONS: dict = {}


def now() -> datetime:
    return datetime.now(UTC)


def database_url(db: str) -> str:
    """A SQLAlchemy URL from a file path, a `sqlite:///` URL or a `postgresql://` URL (psycopg 3 driver)."""
    if "://" not in db:
        return "sqlite:///" + os.path.abspath(db)
    try:
        url = make_url(db)
    except (ArgumentError, ValueError):
        raise ConfigError(f"bad database URL '{db}': expected a file path, sqlite:///PATH or "
                          "postgresql://USER:PASSWORD@HOST:PORT/NAME") from None
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if url.drivername == "sqlite":
        return db
    raise ConfigError(f"bad database URL '{db}': the scheme '{url.drivername}' is not supported "
                      "(use a file path, sqlite:///PATH or postgresql://...)")


def _where(db: str) -> str:
    """The database for messages, without its password."""
    if "://" not in db:
        return db
    try:
        return make_url(db).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return db


def open_db(db: str, *, create: bool = False) -> Engine:
    """Connect to the labeling database `db` and bring its schema to SCHEMA_VERSION.

    With `create`, an empty or missing database gets the tables; without, it is an error (so that a typo in
    `--db` does not silently start a new, empty store)."""
    url = database_url(db)
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        path = make_url(url).database
        if not create and (not path or not os.path.exists(path)):
            raise AlignkitError(f"no labeling database at '{db}' (create one with `alignkit label import`)")
        # one connection, handed from thread to thread by the pool's queue: SQLite runs one writer at a time
        # anyway, and queueing here is fairer and faster than every thread polling SQLite's busy lock
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60},
                               pool_size=1, max_overflow=0, pool_timeout=120)
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    else:
        engine = create_engine(url, pool_size=10, max_overflow=30, pool_pre_ping=True)
    try:
        with engine.begin() as conn:
            tables = set(inspect(conn).get_table_names())
            if "schema_version" not in tables:
                if tables - set(metadata.tables):
                    raise AlignkitError(f"'{_where(db)}' holds other tables ({', '.join(sorted(tables))}) "
                                        "and no alignkit schema_version: not a labeling database")
                if not create:
                    raise AlignkitError(f"'{_where(db)}' is not a labeling database yet "
                                        "(create one with `alignkit label import`)")
                metadata.create_all(conn)
                conn.execute(insert(schema_version).values(version=SCHEMA_VERSION))
                conn.execute(insert(settings).values(key="csrf_secret", value=secrets.token_hex(32)))
            version = conn.execute(select(schema_version.c.version)).scalar_one()
            if version > SCHEMA_VERSION:
                raise AlignkitError(f"'{_where(db)}' has schema version {version}, newer than this alignkit "
                                    f"supports ({SCHEMA_VERSION}): upgrade alignkit")
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](conn)
                version += 1
                conn.execute(schema_version.update().values(version=version))
    except SQLAlchemyError as e:
        engine.dispose()
        first = str(e.orig if getattr(e, "orig", None) is not None else e).strip().splitlines()[0]
        raise AlignkitError(f"cannot open the labeling database '{_where(db)}': {first}") from None
    return engine


def _sqlite_connect(dbapi_connection, _record) -> None:
    """SQLite: our own BEGIN (IMMEDIATE, so concurrent writers queue instead of failing), write-ahead log,
    full fsync on commit (an accepted vote survives a crash), foreign keys checked."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def setting(conn, key: str) -> str:
    return conn.execute(select(settings.c.value).where(settings.c.key == key)).scalar_one()
