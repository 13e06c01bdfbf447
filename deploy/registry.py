"""The embedded model registry: model files under a root folder, and their metadata together with the
services that use them in one SQLite database.

The root (`Registry(root)`, else `MLSCORE_HOME`, else `~/.mlscore`) holds:

    registry.db                        metadata; WAL mode, schema version in `PRAGMA user_version`
    registry.lock                      taken while a registry is opened (schema set-up, clean-up)
    models/<name>/<version>/<file or folder as registered>     the layout `AZUREML_MODEL_DIR` expects
    tmp/                               staging folders of registrations in progress

A registration copies into a staging folder under `tmp/`, then, holding the database's write lock,
allocates the version, renames the folder into place and commits the row. A crash before the commit
leaves no row, and what it left on disk is removed the next time a registry is opened on the root.
"""

from __future__ import annotations

import builtins
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlscore.scoring.model_path import ModelNotFoundError, get_model_path

HOME_ENV = "MLSCORE_HOME"
DEFAULT_ROOT = Path("~/.mlscore")
BUSY_TIMEOUT_S = 30.0

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_MODEL_NAME_RULE = "1 to 255 letters, digits, '-', '_' or '.', starting with a letter or digit"
_SERVICE_NAME = re.compile(r"[a-z][a-z0-9-]{1,30}[a-z0-9]")
_SERVICE_NAME_RULE = (
    "3 to 32 lowercase letters, digits or '-', starting with a letter and ending with a letter or digit"
)
_VERSION = re.compile(r"[1-9][0-9]{0,18}")  # the length bound keeps int() of a huge string cheap
MAX_VERSION = (1 << 63) - 1  # SQLite's largest INTEGER
_CHUNK_BYTES = 1 << 20


class RegistryError(Exception):
    """A registry operation that cannot be done; the message names what was wrong and what is allowed."""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model, as recorded."""

    name: str
    version: int
    description: str | None
    tags: dict[str, str] = field(hash=False)
    created_at: datetime
    source_path: str
    size_bytes: int
    sha256: str
    path: Path
    """The stored file or folder: `<root>/models/<name>/<version>/<its name when registered>`."""

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "description": self.description,
            "tags": self.tags,
            "created_at": self.created_at.isoformat(),
            "source_path": self.source_path,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "path": str(self.path),
        }


@dataclass(frozen=True)
class Service:
    """A deployed service as recorded: where it runs, its state, the model versions it uses."""

    name: str
    compute_type: str
    state: str
    models: tuple[str, ...]
    details: dict[str, Any] = field(hash=False)
    created_at: datetime
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "compute_type": self.compute_type,
            "state": self.state,
            "models": list(self.models),
            "details": self.details,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def default_root() -> Path:
    """`MLSCORE_HOME` when set, else `~/.mlscore`."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_ROOT).expanduser()


def check_service_name(name: object) -> str:
    """`name` when it is a valid service name, else RegistryError naming it and the rule: the name
    becomes a folder under the registry, a container's name and a Kubernetes label."""
    if not isinstance(name, str) or not _SERVICE_NAME.fullmatch(name):
        raise RegistryError(f"invalid service name {name!r}: use {_SERVICE_NAME_RULE}")
    return name


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise RegistryError(f"invalid model name {name!r}: use {_MODEL_NAME_RULE}")
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`NAME` or `NAME:VERSION` as (name, version), the version None for a bare name."""
    if not isinstance(ref, str):
        raise RegistryError(f"invalid model reference {ref!r}: expected a string NAME or NAME:VERSION")
    name, colon, version = ref.partition(":")
    if colon and not (_VERSION.fullmatch(version) and int(version) <= MAX_VERSION):
        raise RegistryError(
            f"invalid model reference {ref!r}: expected NAME or NAME:VERSION, VERSION a whole number from 1 "
            f"to {MAX_VERSION}"
        )
    return check_model_name(name), int(version) if colon else None


def parse_tags(items: Iterable[str]) -> dict[str, str]:
    """`KEY=VALUE` strings (the CLI's `--tag`) as a dict; a repeated key keeps its last value."""
    tags = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals:
            raise RegistryError(f"invalid tag {item!r}: expected KEY=VALUE")
        tags[key] = value
    return check_tags(tags)


def check_tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    for key, value in (tags or {}).items():
        if not isinstance(key, str) or not key.strip() or "=" in key:
            raise RegistryError(f"invalid tag key {key!r}: a tag key is a non-blank string without '='")
        if not isinstance(value, str):
            raise RegistryError(f"invalid value {value!r} for tag {key!r}: tag values are strings")
    return dict(tags or {})


class Registry:
    """Registered models and the services that use them, under one root folder.

    Every operation opens its own short-lived SQLite connection, so one `Registry` may be shared
    by threads, and any number of processes may open the same root at once.
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser().absolute() if root is not None else default_root().absolute()
        self.models_dir = self.root / "models"
        """The folder to serve these models from: `AZUREML_MODEL_DIR` for the registry layout."""
        self._tmp = self.root / "tmp"
        self._database = self.root / "registry.db"
        self._open()

    # models

    def register(
        self,
        name: str,
        path: Path | str,
        tags: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> ModelVersion:
        """Copy a file or a folder into the registry as the next version of `name`.

        The copy goes to a staging folder first. The version is allocated, the folder renamed into
        place and the row committed in one write transaction, so concurrent registrations (threads or
        processes) never share a version and no version is visible before its files are complete.
        """
        check_model_name(name)
        tags = check_tags(tags)
        if description is not None and not isinstance(description, str):
            raise RegistryError(f"invalid description {description!r}: a description is a string")
        source = self._check_source(path)
        with _staging_folder(self._tmp) as staging:
            try:
                size, sha256 = _copy_hashing(source, staging / source.name)
                os.chmod(staging, 0o755)
            except OSError as error:
                raise RegistryError(f"could not copy {source} into the registry at {self.root}: {error}") from error
            created_at = _now()
            with self._write() as db:
                _check_distinct_folder_name(db, name)
                version = _next_version(db, name)
                version_dir = self.models_dir / name / str(version)
                stored = version_dir / source.name
                try:
                    _move_into_place(staging, version_dir)
                    db.execute(
                        "INSERT INTO models (name, version, description, tags, created_at, source_path,"
                        " size_bytes, sha256, stored_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (name, version, description, json.dumps(tags, sort_keys=True), created_at.isoformat(),
                         str(source), size, sha256, stored.relative_to(self.root).as_posix()),
                    )
                    db.execute("COMMIT")
                except BaseException as error:
                    _move_back(version_dir, staging)
                    if isinstance(error, OSError):
                        raise RegistryError(f"could not store {name}:{version} in {version_dir}: {error}") from error
                    raise
        return ModelVersion(name, version, description, tags, created_at, str(source), size, sha256, stored)

    def get(self, ref: str) -> ModelVersion:
        """One version: `NAME:VERSION`, or `NAME` for its latest."""
        name, version = parse_ref(ref)
        with self._connect() as db:
            return self._model(db, name, version)

    def list(
        self, name: str | None = None, tags: Mapping[str, str | None] | None = None
    ) -> builtins.list[ModelVersion]:
        """Every version, by name then version; only those of `name`, and only those carrying all of
        `tags` (a value of None asks for the key with any value)."""
        with self._connect() as db:
            if name is None:
                rows = db.execute("SELECT * FROM models ORDER BY name, version").fetchall()
            else:
                rows = db.execute("SELECT * FROM models WHERE name = ? ORDER BY version",
                                  (check_model_name(name),)).fetchall()
        models = [self._from_row(row) for row in rows]
        return [model for model in models if _has_tags(model.tags, tags or {})]

    def model_path(self, name: str, version: int | None = None) -> Path:
        """Where a version's files are found when `AZUREML_MODEL_DIR` is `models_dir`; the latest
        version when none is given.

        The answer is the server's own (`scoring.model_path.get_model_path`): the file when the
        version holds a single file, else the version's folder.
        """
        model = self.get(name if version is None else f"{name}:{version}")
        try:
            return Path(get_model_path(model.name, model.version, root=self.models_dir))
        except ModelNotFoundError as error:
            raise RegistryError(f"model {model.ref} is recorded but its files are missing: {error}") from error

    def download(self, ref: str, target_dir: Path | str, exist_ok: bool = False) -> Path:
        """Copy a version's file or folder into `target_dir` and return the copy's path.

        The copy is made beside its destination and renamed into place once its sha256 matches
        the record, so the destination is never half-written.
        """
        model = self.get(ref)
        target_dir = Path(target_dir).expanduser()
        destination = target_dir / model.path.name
        if os.path.lexists(destination) and not exist_ok:
            raise RegistryError(f"{destination} already exists; pass exist_ok=True (--exist-ok) to replace it")
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
            partial = Path(tempfile.mkdtemp(prefix=f".{model.path.name}.partial-", dir=target_dir))
        except OSError as error:
            raise RegistryError(f"cannot write into {target_dir}: {error}") from error
        try:
            _, sha256 = _copy_hashing(model.path, partial / model.path.name)
            if sha256 != model.sha256:
                raise RegistryError(
                    f"the stored files of {model.ref} in {model.path} no longer match their recorded sha256;"
                    " the registry's copy is damaged"
                )
            _remove(destination)
            os.rename(partial / model.path.name, destination)
        except OSError as error:
            raise RegistryError(f"could not download {model.ref} into {target_dir}: {error}") from error
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return destination

    def delete(self, ref: str) -> ModelVersion:
        """Delete one version, named `NAME:VERSION`. A bare `NAME` is refused rather than read as
        "the latest": `delete_all_versions(NAME)` deletes every version."""
        name, version = parse_ref(ref)
        if version is None:
            raise RegistryError(
                f"delete needs a version: {name}:VERSION deletes one version,"
                f" delete_all_versions({name!r}) deletes every version of {name}"
            )
        return self._delete(name, version)[0]

    def delete_all_versions(self, name: str) -> builtins.list[ModelVersion]:
        """Delete every version of `name`; the versions deleted. Version numbers are not reused:
        registering `name` again continues after the highest it ever had."""
        return self._delete(check_model_name(name), None)

    # services

    def record_service(
        self,
        name: str,
        models: Iterable[str | ModelVersion],
        compute_type: str,
        state: str,
        details: Mapping[str, Any] | None = None,
    ) -> Service:
        """Create or replace a service's record: the model versions it uses (a bare `NAME` is pinned
        to its latest version now), where it runs, its state and free-form details (port, keys, …).

        While a service uses a version, deleting that version is refused.
        """
        check_service_name(name)
        for label, value in (("compute_type", compute_type), ("state", state)):
            if not isinstance(value, str) or not value.strip():
                raise RegistryError(f"invalid {label} {value!r} for service {name!r}: a non-blank string")
        try:
            details_json = json.dumps(dict(details or {}), sort_keys=True)
        except (TypeError, ValueError) as error:
            raise RegistryError(f"details of service {name!r} must be JSON-serialisable: {error}") from error
        if isinstance(models, str):
            raise RegistryError(f"models of service {name!r}: expected a list of NAME[:VERSION], got {models!r}")
        refs = [parse_ref(model.ref if isinstance(model, ModelVersion) else model) for model in models]
        now = _now().isoformat()
        with self._write() as db:
            pinned = sorted({(model.name, model.version) for model in (self._model(db, *ref) for ref in refs)})
            db.execute(
                "INSERT INTO services (name, compute_type, state, details, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET compute_type = excluded.compute_type,"
                " state = excluded.state, details = excluded.details, updated_at = excluded.updated_at",
                (name, compute_type, state, details_json, now, now),
            )
            db.execute("DELETE FROM service_models WHERE service = ?", (name,))
            db.executemany("INSERT INTO service_models (service, model_name, model_version) VALUES (?, ?, ?)",
                           [(name, model_name, version) for model_name, version in pinned])
            return self._service(db, name)

    def get_service(self, name: str) -> Service:
        with self._connect() as db:
            return self._service(db, name)

    def list_services(self) -> builtins.list[Service]:
        with self._connect() as db:
            names = [row[0] for row in db.execute("SELECT name FROM services ORDER BY name")]
            return [self._service(db, name) for name in names]

    def remove_service(self, name: str) -> None:
        """Forget a service; the model versions it used can be deleted again."""
        with self._write() as db:
            self._service(db, name)
            db.execute("DELETE FROM services WHERE name = ?", (name,))

    def services_using(self, model_ref: str) -> builtins.list[str]:
        """Names of the services that use `NAME:VERSION`, or any version of a bare `NAME`."""
        name, version = parse_ref(model_ref)
        with self._connect() as db:
            return sorted({service for service, _ in _users(db, name, version)})

    # internals

    def _open(self) -> None:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # service details may hold keys
            self.models_dir.mkdir(exist_ok=True)
            self._tmp.mkdir(exist_ok=True)
        except OSError as error:
            raise RegistryError(f"cannot create the registry at {self.root}: {error}") from error
        # Opens take turns: SQLite does not wait for its lock while switching a new database to WAL,
        # so two first opens at once would fail with "database is locked".
        with _locked(self.root / "registry.lock"):
            with self._connect() as db:
                if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    db.execute("PRAGMA journal_mode = WAL")
            with self._write() as db:
                _migrate(db, self._database)
                self._remove_uncommitted_versions(db)
            _remove_abandoned_staging(self._tmp)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self._database, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as error:
            raise RegistryError(f"cannot open the registry database {self._database}: {error}") from error
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys = ON")
            yield db
        except sqlite3.Error as error:
            raise RegistryError(f"registry database {self._database}: {error}") from error
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A connection in a `BEGIN IMMEDIATE` transaction: the write lock is taken before the first
        read, so what is read to decide a write (the next version, a service's use of a model) still
        holds at the commit. Commits on leaving unless the body already did."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if db.in_transaction:
                db.execute("COMMIT")

    def _check_source(self, path: Path | str) -> Path:
        source = Path(os.path.abspath(os.path.expanduser(path)))  # lexical: a link keeps its own name
        if not source.exists():
            raise RegistryError(f"cannot register {path}: no such file or folder")
        if not (source.is_file() or source.is_dir()):
            raise RegistryError(f"cannot register {path}: not a regular file or a folder")
        real, tmp = source.resolve(), self._tmp.resolve()
        if source.is_dir() and (real == tmp or real in tmp.parents or tmp in real.parents):
            raise RegistryError(f"cannot register {path}: it holds or lies in the registry's staging folder {tmp}")
        return source

    def _model(self, db: sqlite3.Connection, name: str, version: int | None) -> ModelVersion:
        """A version, or the latest; the error lists the names or versions there are."""
        if version is None:
            row = db.execute("SELECT * FROM models WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)).fetchone()
        else:
            row = db.execute("SELECT * FROM models WHERE name = ? AND version = ?", (name, version)).fetchone()
        if row is not None:
            return self._from_row(row)
        versions = [str(row[0]) for row in db.execute("SELECT version FROM models WHERE name = ? ORDER BY version",
                                                      (name,))]
        if versions:
            raise RegistryError(f"model {name!r} has no version {version}; its versions: {', '.join(versions)}")
        names = [row[0] for row in db.execute("SELECT DISTINCT name FROM models ORDER BY name")]
        raise RegistryError(f"no model named {name!r} in the registry at {self.root}; registered: {_listing(names)}")

    def _from_row(self, row: sqlite3.Row) -> ModelVersion:
        return ModelVersion(
            name=row["name"],
            version=row["version"],
            description=row["description"],
            tags=json.loads(row["tags"]),
            created_at=datetime.fromisoformat(row["created_at"]),
            source_path=row["source_path"],
            size_bytes=row["size_bytes"],
            sha256=row["sha256"],
            path=self.root / row["stored_path"],
        )

    def _service(self, db: sqlite3.Connection, name: str) -> Service:
        row = db.execute("SELECT * FROM services WHERE name = ?", (name,)).fetchone()
        if row is None:
            names = [row[0] for row in db.execute("SELECT name FROM services ORDER BY name")]
            raise RegistryError(
                f"no service named {name!r} in the registry at {self.root}; recorded: {_listing(names)}"
            )
        models = db.execute("SELECT model_name, model_version FROM service_models WHERE service = ?"
                            " ORDER BY model_name, model_version", (name,))
        return Service(
            name=row["name"],
            compute_type=row["compute_type"],
            state=row["state"],
            models=tuple(f"{model_name}:{version}" for model_name, version in models),
            details=json.loads(row["details"]),
            created_at=datetime.fromisoformat(row["created_at"]),
            updated_at=datetime.fromisoformat(row["updated_at"]),
        )

    def _delete(self, name: str, version: int | None) -> builtins.list[ModelVersion]:
        with self._write() as db:
            if version is None:
                self._model(db, name, None)  # an unknown name's error lists the known ones
                doomed = [self._from_row(row) for row in
                          db.execute("SELECT * FROM models WHERE name = ? ORDER BY version", (name,))]
            else:
                doomed = [self._model(db, name, version)]
            users = _users(db, name, version)
            if users:
                used = ", ".join(f"{service} (uses {model_ref})" for service, model_ref in users)
                what = f"{name}:{version}" if version is not None else f"model {name}"
                raise RegistryError(f"cannot delete {what}: it is used by service(s) {used};"
                                    " delete those services or move them to another version first")
            db.executemany("DELETE FROM models WHERE name = ? AND version = ?",
                           [(model.name, model.version) for model in doomed])
        # Files go after the commit: a crash in between leaves folders with no row, which the next
        # open removes, never a row whose files are gone.
        for model in doomed:
            self._discard(self.models_dir / model.name / str(model.version))
        with self._write() as db:
            if db.execute("SELECT 1 FROM models WHERE name = ? LIMIT 1", (name,)).fetchone() is None:
                _remove_if_empty(self.models_dir / name)
        return doomed

    def _discard(self, folder: Path) -> None:
        """Move a folder under tmp/ (it leaves models/ in one step), then delete it there."""
        trash = self._tmp / f"trash-{secrets.token_hex(8)}"
        try:
            os.rename(folder, trash)
        except OSError:
            return  # its row is gone already: the next open removes the folder
        shutil.rmtree(trash, ignore_errors=True)

    def _remove_uncommitted_versions(self, db: sqlite3.Connection) -> None:
        """Remove version folders that no row names: left by a crash between a registration's rename
        and its commit, or between a delete's commit and its file removal. The caller holds the write
        lock, so no registration is between its rename and its commit now."""
        recorded = {(row[0], row[1]) for row in db.execute("SELECT name, version FROM models")}
        for name_dir in _subfolders(self.models_dir):
            for version_dir in _subfolders(name_dir):
                if version_dir.name.isdigit() and (name_dir.name, int(version_dir.name)) not in recorded:
                    shutil.rmtree(version_dir, ignore_errors=True)
            _remove_if_empty(name_dir)


# schema


def _schema_1(db: sqlite3.Connection) -> None:
    statements = (
        # Versions are counted here, not by MAX(version), so a deleted version's number is never reused.
        "CREATE TABLE model_names (name TEXT PRIMARY KEY, last_version INTEGER NOT NULL)",
        "CREATE TABLE models ("
        " name TEXT NOT NULL REFERENCES model_names (name),"
        " version INTEGER NOT NULL,"
        " description TEXT,"
        " tags TEXT NOT NULL,"  # JSON object, string to string
        " created_at TEXT NOT NULL,"  # UTC, ISO 8601
        " source_path TEXT NOT NULL,"
        " size_bytes INTEGER NOT NULL,"
        " sha256 TEXT NOT NULL,"
        " stored_path TEXT NOT NULL,"  # relative to the registry root
        " PRIMARY KEY (name, version))",
        "CREATE TABLE services ("
        " name TEXT PRIMARY KEY,"
        " compute_type TEXT NOT NULL,"
        " state TEXT NOT NULL,"
        " details TEXT NOT NULL,"  # JSON object
        " created_at TEXT NOT NULL,"
        " updated_at TEXT NOT NULL)",
        "CREATE TABLE service_models ("
        " service TEXT NOT NULL REFERENCES services (name) ON DELETE CASCADE,"
        " model_name TEXT NOT NULL,"
        " model_version INTEGER NOT NULL,"
        " PRIMARY KEY (service, model_name, model_version),"
        " FOREIGN KEY (model_name, model_version) REFERENCES models (name, version))",
        "CREATE INDEX service_models_by_model ON service_models (model_name, model_version)",
    )
    for statement in statements:  # not executescript(), which would commit the open transaction
        db.execute(statement)


_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_schema_1,)
"""Migration `i` takes the schema from version `i` to `i + 1`; append, never edit."""
SCHEMA_VERSION = len(_MIGRATIONS)


def _migrate(db: sqlite3.Connection, database: Path) -> None:
    current = db.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise RegistryError(f"the registry database {database} has schema version {current}, newer than this"
                            f" mlscore reads (up to {SCHEMA_VERSION}); upgrade mlscore")
    for migration in _MIGRATIONS[current:]:
        migration(db)
    if current != SCHEMA_VERSION:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _check_distinct_folder_name(db: sqlite3.Connection, name: str) -> None:
    """Refuse a name that differs from a registered one only in case: on a case-insensitive filesystem
    (macOS, Windows) both would be stored in one folder."""
    row = db.execute("SELECT name FROM models WHERE name = ? COLLATE NOCASE AND name != ? LIMIT 1",
                     (name, name)).fetchone()
    if row is not None:
        raise RegistryError(f"model name {name!r} differs from the registered {row[0]!r} only in case;"
                            " names must differ by more than case, as their folders would collide")


def _next_version(db: sqlite3.Connection, name: str) -> int:
    db.execute("INSERT INTO model_names (name, last_version) VALUES (?, 1)"
               " ON CONFLICT (name) DO UPDATE SET last_version = last_version + 1", (name,))
    return db.execute("SELECT last_version FROM model_names WHERE name = ?", (name,)).fetchone()[0]


def _users(db: sqlite3.Connection, name: str, version: int | None) -> builtins.list[tuple[str, str]]:
    """(service, NAME:VERSION) for each use of the version, or of any version when it is None."""
    rows = db.execute(
        "SELECT service, model_version FROM service_models WHERE model_name = ? AND (? IS NULL OR model_version = ?)"
        " ORDER BY service, model_version", (name, version, version))
    return [(service, f"{name}:{model_version}") for service, model_version in rows]


def _has_tags(tags: Mapping[str, str], wanted: Mapping[str, str | None]) -> bool:
    return all(key in tags and (value is None or tags[key] == value) for key, value in wanted.items())


# files


@contextmanager
def _staging_folder(tmp: Path) -> Iterator[Path]:
    """A new folder under `tmp`, flock-ed while the caller works in it.

    Opening a registry removes only the staging folders whose lock it can take: those whose owner
    died. The kernel drops a dead process's locks, so a crash needs no clean-up of its own.
    """
    while True:
        folder = Path(tempfile.mkdtemp(prefix="stage-", dir=tmp))
        handle = os.open(folder, os.O_RDONLY)
        _lock(handle)
        if _still_there(handle, folder):
            break
        os.close(handle)  # an open elsewhere locked it first and removed it
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # already gone once renamed into place
        os.close(handle)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _lock(handle)
        yield
    finally:
        os.close(handle)


def _lock(handle: int) -> None:
    # Without locks on this filesystem no open can lock a staging folder either, so none removes it.
    with suppress(OSError):
        fcntl.flock(handle, fcntl.LOCK_EX)


def _still_there(handle: int, folder: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle), os.stat(folder))
    except FileNotFoundError:
        return False


def _remove_abandoned_staging(tmp: Path) -> None:
    """Remove what registrations that died left under `tmp`, and deletes' leftovers; a folder whose
    lock is held belongs to a live registration and stays."""
    for entry in tmp.iterdir():
        try:
            handle = os.open(entry, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(handle)
            continue
        try:
            _remove(entry)
        finally:
            os.close(handle)


def _move_into_place(staging: Path, version_dir: Path) -> None:
    """Rename the staging folder to the version's folder; the caller holds the write lock."""
    if version_dir.exists():  # an uncommitted leftover: no row names this version
        shutil.rmtree(version_dir)
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, version_dir)
    _sync_folder(version_dir.parent)


def _move_back(version_dir: Path, staging: Path) -> None:
    """Undo `_move_into_place` after a failed commit, so no uncommitted version stays visible."""
    if not staging.exists() and version_dir.exists():
        os.rename(version_dir, staging)


def _copy_hashing(source: Path, target: Path) -> tuple[int, str]:
    """Copy a file or a folder to `target`, which must not exist; its size in bytes and sha256.

    A file's sha256 is that of its bytes (what `sha256sum FILE` prints). A folder's is that of its
    manifest: a line `<file's sha256>  <relative POSIX path>\\n` per file, sorted by path, so the same
    tree has the same digest wherever it lies. Empty folders are copied but not hashed.
    """
    if source.is_file():
        return _copy_file(source, target)
    folders, files = _walk(source)
    target.mkdir()
    for folder in folders:
        (target / folder).mkdir(parents=True, exist_ok=True)
    manifest = hashlib.sha256()
    total = 0
    for relative in files:
        size, digest = _copy_file(source / relative, target / relative)
        manifest.update(f"{digest}  {relative}\n".encode())
        total += size
    return total, manifest.hexdigest()


def _copy_file(source: Path, target: Path) -> tuple[int, str]:
    """Copy one file's bytes and permission bits and flush them to disk; the size and sha256 of the
    bytes written."""
    digest = hashlib.sha256()
    size = 0
    with open(source, "rb") as reader, open(target, "xb") as writer:
        while chunk := reader.read(_CHUNK_BYTES):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    shutil.copymode(source, target)
    return size, digest.hexdigest()


def _walk(folder: Path) -> tuple[builtins.list[str], builtins.list[str]]:
    """The sub-folders and the files under `folder`, as sorted relative POSIX paths.

    Links are followed (a model's files are often links into a download cache), except a link to
    a folder that contains it, which would never end.
    """
    folders: builtins.list[str] = []
    files: builtins.list[str] = []
    for current, subfolders, names in os.walk(folder, followlinks=True):
        here = Path(current)
        real_here = os.path.realpath(here)
        relative = here.relative_to(folder)
        for sub in subfolders:
            target = os.path.realpath(here / sub)
            if real_here == target or real_here.startswith(target + os.sep):
                raise RegistryError(f"cannot register {folder}: the link {here / sub} loops back to {target}")
            folders.append((relative / sub).as_posix())
        for name in names:
            if not (here / name).is_file():
                raise RegistryError(f"cannot register {folder}: {here / name} is not a regular file"
                                    " (a broken link, a socket or a pipe?)")
            files.append((relative / name).as_posix())
    return sorted(folders), sorted(files)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


def _remove_if_empty(folder: Path) -> None:
    with suppress(OSError):  # not empty, or already gone
        folder.rmdir()


def _subfolders(folder: Path) -> builtins.list[Path]:
    return [entry for entry in folder.iterdir() if entry.is_dir() and not entry.is_symlink()]


def _sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable before the row that points at it is committed."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _listing(names: builtins.list[str], limit: int = 20) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, … ({len(names) - limit} more)"
