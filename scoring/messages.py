"""The raw request and response that cross the boundary between the HTTP front and the scoring pipeline.

They hold only plain bytes, strings and numbers, so the pipeline can run in another process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator, Union

# Generators from run() are Iterators; a body streamed from a worker process arrives as an AsyncIterator.
Body = Union[bytes, Iterator[bytes], AsyncIterator[bytes]]


@dataclass(slots=True)
class RawRequest:
    method: str
    path: str
    query: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # names lower-case, as ASGI gives them
    body: bytes = b""
    request_id: bytes = b""  # the id the response carries (x-ms-request-id), for log lines
    client: str = ""  # the client's host (its address), for a raw-HTTP run()'s request.remote_addr

    def header(self, name: bytes) -> bytes | None:
        """The first value of a lower-case header name, or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class RawResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: Body
    run_ms: float | None = None  # time spent in run(); None when run() was not called
    run_failed: bool = False  # the x-ms-run-function-failed header
    failure: str = ""  # set by executors when they cut a request short: "scoring_timeout", "worker_died"
    batch: int = 1  # the requests that shared this one's model call (batching; 1: run alone)
