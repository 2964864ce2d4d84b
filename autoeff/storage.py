"""Where studies live: storage URLs (normalized, masked, the SQLite default in `--out`) and the read-only check
that a URL can hold a study before anything is written, and `open_rdb`, which opens Optuna's RDB storage while
other processes may be creating the same new database. Opening a storage with heartbeats is
`autoeff.workers.open_storage`.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy
import sqlalchemy.exc
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from autoeff.errors import SearchError

_SQLITE_MAGIC = b"SQLite format 3\x00"
_S = TypeVar("_S")
# How long opening a storage waits out another process creating Optuna's tables at the same moment.
SCHEMA_RACE_S = 30.0


def unwritable(folder: Path) -> str | None:
    """Why this process cannot create files in `folder` (or in its nearest existing parent, where `folder` would
    be created), or None. Probes with a real temporary file (removed at once): permission bits say nothing for
    root, nor for read-only mounts and special file systems."""
    existing = next((p for p in (folder, *folder.resolve().parents) if p.exists()), Path("/"))
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".autoeff-probe-", dir=existing)
    except OSError:  # EACCES, EROFS, ENOENT (special file systems): the reason varies with the user, not the fix
        return f"{existing} is not writable"
    os.close(fd)
    os.unlink(name)
    return None


def mask_url(url: str) -> str:
    """The storage URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy parses: show it as given
        return url


def sqlite_path(url: str) -> Path | None:
    """The database file of a `sqlite:///path` URL (None for other back ends, bad URLs and in-memory SQLite)."""
    try:
        u = make_url(url)
    except ArgumentError:
        return None
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def normalize_storage_url(url: str) -> str:
    """`postgresql://...` -> `postgresql+psycopg2://...` when psycopg 3 (SQLAlchemy 2.1's default driver) is
    missing but psycopg2 (the `postgres` extra) is installed; any other URL is returned unchanged."""
    if url.startswith(("postgresql://", "postgres://")) and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def default_storage(out: Path) -> str:
    """The SQLite study of an output folder."""
    return f"sqlite:///{(out / 'study.db').resolve()}"


def storage_url(storage: str | None, out: Path) -> str:
    """The URL a run uses: `storage` (normalized) or the SQLite file in `out`."""
    return normalize_storage_url(storage) if storage else default_storage(out)


# SQLite's extended result code for a read-only connection that finds a hot journal it must roll back first
# (https://www.sqlite.org/rescode.html#readonly_rollback).
_SQLITE_READONLY_ROLLBACK = 776


def _sqlite_tables(path: Path) -> set[str]:
    """The table names of the SQLite file `path`, read through a read-only connection.

    A process killed in the middle of a write (`kill -9` of a run during a commit) leaves a hot rollback journal
    next to the file; SQLite rolls it back on the next open, which a read-only connection cannot do ("attempt to
    write a readonly database"). Only then the file is opened read-write, so that SQLite's own recovery runs, as
    the resumed run's first open would do anyway.
    """
    def read(uri: str) -> set[str]:
        with closing(sqlite3.connect(uri, uri=True)) as con:
            return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    try:
        return read(f"{path.resolve().as_uri()}?mode=ro")
    except sqlite3.OperationalError as e:
        if getattr(e, "sqlite_errorcode", None) != _SQLITE_READONLY_ROLLBACK and "readonly" not in str(e):
            raise
    return read(f"{path.resolve().as_uri()}?mode=rw")


def check_storage(url: str, what: str, new_parent_must_exist: bool = True) -> bool:
    """Refuse a storage URL that cannot hold a study, reading only (nothing is created; a hot journal left by a
    killed process is rolled back, see `_sqlite_tables`).

    `what` names the URL in messages (`--storage`, `the study in --out`). Returns whether it already holds
    Optuna's tables (so a study of that name may exist). Raises SearchError with one line.
    """
    try:
        u = make_url(url)
    except Exception as e:  # sqlalchemy ArgumentError (and ValueError for a bad port)
        raise SearchError(f"{what} {mask_url(url)!r} is not a database URL ({' '.join(str(e).split())}); write "
                          "sqlite:///path/study.db or postgresql://user@host/db") from None
    if u.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if path is None:
            raise SearchError(f"{what} {mask_url(url)!r} keeps the study in memory, where it is lost at exit; write "
                              "sqlite:///path/study.db")
        if not path.exists():
            if new_parent_must_exist and not path.parent.is_dir():
                raise SearchError(f"{what} {mask_url(url)!r}: folder {path.parent} does not exist; create it or "
                                  "choose another path")
            why = unwritable(path.parent) if path.parent.is_dir() else None
            if why is not None:
                raise SearchError(f"{what} {mask_url(url)!r}: {why}; choose another path")
            return False
        if not os.access(path, os.R_OK | os.W_OK):
            raise SearchError(f"{what} {mask_url(url)!r}: {path} cannot be read and written by this user")
        with open(path, "rb") as f:
            head = f.read(16)
        if not head:
            return False  # an empty file is an empty SQLite database
        if head != _SQLITE_MAGIC:
            raise SearchError(f"{what} {mask_url(url)!r}: {path} is not an SQLite database; give a new file or an "
                              "Optuna study database")
        try:
            tables = _sqlite_tables(path)
        except sqlite3.Error as e:
            raise SearchError(f"{what} {mask_url(url)!r}: {path} cannot be read as SQLite ({e})") from None
        if tables and "studies" not in tables:
            raise SearchError(f"{what} {mask_url(url)!r}: {path} is another program's SQLite database (no Optuna "
                              "tables); give a new file")
        return "studies" in tables
    try:
        engine = sqlalchemy.create_engine(url)
    except ImportError as e:
        raise SearchError(f"{what} {mask_url(url)!r} needs the database driver {e.name!r}, which is not installed; "
                          "pip install it, or name an installed driver in the URL (e.g. postgresql+psycopg2://)"
                          ) from None
    except Exception as e:  # unknown dialect (NoSuchModuleError), bad URL
        raise SearchError(f"{what} {mask_url(url)!r} cannot be used: {type(e).__name__}: "
                          f"{' '.join(str(e).split())}; write sqlite:///path/study.db or postgresql://user@host/db"
                          ) from None
    try:
        with engine.connect() as con:
            return bool(sqlalchemy.inspect(con).has_table("studies"))
    except Exception as e:  # unreachable server, refused login, ...
        raise SearchError(f"{what} {mask_url(url)!r}: cannot connect ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:300]})") from None
    finally:
        engine.dispose()


def schema_race(e: BaseException) -> bool:
    """Whether `e` is what a process gets when another one creates Optuna's tables in the same database at the
    same moment: SQLAlchemy's `create_all` checks that a table is missing, then creates it, and the other process
    created it in between ("table ... already exists"; on PostgreSQL also a duplicate `pg_type` row), or both
    inserted Optuna's single `version_info` / `alembic_version` row (a unique or primary key violation)."""
    if isinstance(e, sqlalchemy.exc.IntegrityError):
        return True
    if not isinstance(e, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError)):
        return False
    text = str(e).lower()
    return "already exists" in text or "duplicate key" in text


def open_rdb(factory: Callable[..., _S], url: str, **kwargs: Any) -> _S:
    """`factory(url, **kwargs)` (Optuna's RDBStorage or a subclass), retried while another process is creating
    the same database's tables (`schema_race`).

    Optuna's RDBStorage creates its tables and version rows when it is constructed, with no lock between
    processes; Optuna's answer (optuna/optuna#1092) is to create the storage once before starting workers. Users
    start `autoeff worker`s and `autoeff optimize` together on a new database, so the loser of that race opens
    the storage again (all tables then exist and are skipped) instead of exiting. Any other error is raised."""
    deadline = time.monotonic() + SCHEMA_RACE_S
    while True:
        try:
            return factory(url, **kwargs)
        except Exception as e:
            if not schema_race(e) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.05, 0.5))  # jitter: several losers do not retry in lockstep


__all__ = ["SCHEMA_RACE_S", "schema_race", "open_rdb", "unwritable", "mask_url", "sqlite_path", "normalize_storage_url",
           "default_storage", "storage_url", "check_storage"]
