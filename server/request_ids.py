"""Request ids, as Azure's scoring server handles them: `x-request-id` echoed or made, the two
`x-ms-*` ids mirrored into each other, `TraceId` echoed, and over-long ids refused with 431."""

from __future__ import annotations

import uuid
from typing import Mapping

MAX_ID_LENGTH = 100


class RequestIdTooLong(ValueError):
    """An id header over the limit; `headers` are the id headers that may still go back."""

    def __init__(self, message: str, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(message)
        self.headers = headers


def response_id_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """The id headers a response carries; raises RequestIdTooLong for an id over 100 characters."""
    request_id = headers.get("x-request-id")
    if request_id is None:
        request_id = str(uuid.uuid4())
    elif len(request_id) > MAX_ID_LENGTH:
        raise RequestIdTooLong(f"x-request-id must not exceed {MAX_ID_LENGTH} characters", [])
    out = [(b"x-request-id", request_id.encode("latin-1"))]
    client_id = headers.get("x-ms-client-request-id")
    ms_id = headers.get("x-ms-request-id")
    if (client_id and len(client_id) > MAX_ID_LENGTH) or (ms_id and len(ms_id) > MAX_ID_LENGTH):
        raise RequestIdTooLong(
            f"x-ms-request-id and x-ms-client-request-id must not exceed {MAX_ID_LENGTH} characters", out
        )
    if client_id is not None:
        out.append((b"x-ms-client-request-id", client_id.encode("latin-1")))
    elif ms_id is not None:
        out.append((b"x-ms-client-request-id", ms_id.encode("latin-1")))
    out.append((b"x-ms-request-id", (ms_id if ms_id is not None else client_id or request_id).encode("latin-1")))
    trace_id = headers.get("traceid")
    if trace_id is not None:
        out.append((b"traceid", trace_id.encode("latin-1")))
    return out
