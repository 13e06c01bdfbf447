"""Service keys: which `Authorization: Bearer` values /score accepts, and the key file that can
change while the server runs (rotation without a restart)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from pathlib import Path

logger = logging.getLogger("mlscore.server")

KEY_FILE_POLL_SECONDS = 1.0  # how often a key file is checked for a change (one stat() off the request path)
MAX_KEYS = 2  # primary and secondary, as Azure's keys.primaryKey / keys.secondaryKey


class KeyFileError(ValueError):
    """A key file that cannot be used; the message says why, never what the keys are."""


def read_key_file(path: Path) -> tuple[str, ...]:
    """The keys in a key file: one per line, at most two (primary, then secondary); blank lines
    and lines starting with '#' are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise KeyFileError(f"{path}: cannot be read: {getattr(error, 'strerror', None) or error}") from None
    lines = (line.strip() for line in text.splitlines())
    keys = tuple(line for line in lines if line and not line.startswith("#"))
    if not keys:
        raise KeyFileError(f"{path}: holds no key (one key per line; blank lines and # comments are skipped)")
    if len(keys) > MAX_KEYS:
        raise KeyFileError(f"{path}: at most two keys (primary, secondary), one per line; found {len(keys)}")
    return keys


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class AuthKeys:
    """The keys in force. Keys are kept as SHA-256 digests and a presented key is hashed too, so every
    comparison is of equal-length values: the time taken tells neither a key's length nor which key
    nearly matched."""

    def __init__(self, keys: tuple[str, ...], key_file: Path | None = None) -> None:
        self.enabled = bool(keys)
        self._digests = [_digest(key.encode()) for key in keys]
        self._key_file = key_file
        self._seen: tuple[int, int, int] | None = _file_version(key_file) if key_file else None
        self._warned = ""  # the last problem logged about the key file, so it is logged once

    def authorized(self, header: bytes) -> bool:
        """Whether an Authorization header value carries a key in force."""
        scheme, _, token = header.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            return False
        given = _digest(token)
        matched = False
        for digest in self._digests:  # every key is compared: no early exit
            matched |= hmac.compare_digest(given, digest)
        return matched

    async def watch(self) -> None:
        """Re-read the key file whenever it changes (checked every KEY_FILE_POLL_SECONDS) until cancelled."""
        if self._key_file is None:
            return
        while True:
            await asyncio.sleep(KEY_FILE_POLL_SECONDS)
            self.reload_if_changed()

    def reload_if_changed(self) -> None:
        """New keys from the key file when it changed. A file that became unreadable, empty or
        malformed keeps the keys in force (never everyone locked out, never the server opened) and
        is logged once, as a warning."""
        assert self._key_file is not None
        version = _file_version(self._key_file)
        if version == self._seen:
            return
        try:
            keys = read_key_file(self._key_file)
        except KeyFileError as error:
            if str(error) != self._warned:
                self._warned = str(error)
                logger.warning("key file %s; the keys read before stay in force", error)
            return
        self._seen, self._warned = version, ""
        self._digests = [_digest(key.encode()) for key in keys]
        logger.info("key file %s re-read: %d key(s) in force", self._key_file, len(keys))


def _file_version(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is rewritten or replaced (a Kubernetes secret volume swaps a symlink)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns, status.st_size
