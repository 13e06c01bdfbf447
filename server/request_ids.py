"""Request ids, as Azure's scoring server handles them: `x-request-id` echoed or made, the two
`x-ms-*` ids mirrored into each other, `TraceId` echoed, and over-long ids refused with 431."""

from __future__ import annotations

import random
from typing import Iterable

MAX_ID_LENGTH = 100

# The request headers the server itself reads, picked out of the raw list in one pass.
WANTED = frozenset({
    b"x-request-id", b"x-ms-client-request-id", b"x-ms-request-id", b"traceid", b"authorization", b"content-length",
    b"x-ms-request-timeout-ms", b"transfer-encoding", b"origin",
})


class RequestIdTooLong(ValueError):
    """An id header over the limit; `headers` are the id headers that may still go back."""

    def __init__(self, message: str, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(message)
        self.headers = headers


def pick_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The first value of each header in WANTED (ASGI gives names in lower case)."""
    found: dict[bytes, bytes] = {}
    for name, value in raw:
        if name in WANTED and name not in found:
            found[name] = value
    return found


def new_request_id() -> bytes:
    """A random (version 4) UUID in its text form. An id is a label, not a secret, so it comes from
    `random` rather than os.urandom: no system call per request."""
    text = "%032x" % ((_random_bits(128) & _CLEAR) | _VERSION_4)
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}".encode()


_random_bits = random.Random().getrandbits  # seeded from os.urandom
_CLEAR = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)  # the version nibble and the variant bits
_VERSION_4 = (0x4 << 76) | (0x2 << 62)


def response_id_headers(headers: dict[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    """The id headers a response carries; raises RequestIdTooLong for an id over 100 characters."""
    request_id = headers.get(b"x-request-id")
    if request_id is None:
        request_id = new_request_id()
    elif len(request_id) > MAX_ID_LENGTH:
        raise RequestIdTooLong(f"x-request-id must not exceed {MAX_ID_LENGTH} characters", [])
    out = [(b"x-request-id", request_id)]
    client_id = headers.get(b"x-ms-client-request-id")
    ms_id = headers.get(b"x-ms-request-id")
    if (client_id and len(client_id) > MAX_ID_LENGTH) or (ms_id and len(ms_id) > MAX_ID_LENGTH):
        raise RequestIdTooLong(
            f"x-ms-request-id and x-ms-client-request-id must not exceed {MAX_ID_LENGTH} characters", out
        )
    if client_id is not None:
        out.append((b"x-ms-client-request-id", client_id))
    elif ms_id is not None:
        out.append((b"x-ms-client-request-id", ms_id))
    out.append((b"x-ms-request-id", ms_id if ms_id is not None else client_id or request_id))
    trace_id = headers.get(b"traceid")
    if trace_id is not None:
        out.append((b"traceid", trace_id))
    return out


def request_id_of(ids: list[tuple[bytes, bytes]]) -> bytes:
    """The id that log lines and data collection name a request by: the x-ms-request-id it is answered with."""
    for name, value in ids:
        if name == b"x-ms-request-id":
            return value
    return b""
