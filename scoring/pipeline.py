"""The scoring pipeline: one function from a raw request to a raw response (decode, input mode,
run(), encode), independent of the server process so that it can run inside a worker.

run()'s result becomes the response here: JSON, or a werkzeug (Flask) Response, AMLResponse included,
as it is. Nothing here imports werkzeug: a script that returns its Response, or raises its
HTTPException, has imported it, and only then is it looked for (in sys.modules).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol

from mlscore.scoring.batching import Batching, BatchError, batching_for, is_batched
from mlscore.scoring.collect import collected_header
from mlscore.scoring.encoding import NotEncodable, encode_json
from mlscore.scoring.entry_script import EntryScript
from mlscore.scoring.input_modes import BadInput, InputMode, PlainMode, RawHttpMode, SchemaMode, detect_input_mode
from mlscore.scoring.messages import RawRequest, RawResponse
from mlscore.scoring.request_context import CURRENT, RequestContext

logger = logging.getLogger("mlscore.scoring")

JSON = [(b"content-type", b"application/json")]
TEXT = (b"content-type", b"text/plain; charset=utf-8")
RUN_FAILED_MESSAGE = "An unexpected error occurred in scoring script. Check the logs for more info."


def error_response(status: int, message: str, run_failed: bool = False) -> RawResponse:
    return RawResponse(status, list(JSON), encode_json({"message": message}), run_failed=run_failed)


class Scorer(Protocol):
    """What an executor needs of a pipeline: an entry script's (below) or a model's (onnx_model.py).
    One that `batches` answers several queued requests with one model call in `handle_batch`: a
    response per request, in order, each with `batch` set to the requests that shared its call.
    Requests it cannot merge (a bad input, other shapes) it answers as `handle` would."""

    batches: bool

    def handle(self, request: RawRequest) -> RawResponse: ...

    def handle_batch(self, requests: list[RawRequest]) -> list[RawResponse]: ...


class ScoringPipeline:
    """Scores requests for one loaded entry script.

    It `batches` when run() is marked `@batched` (batching.py) and takes decoded arguments (the schema
    or the plain mode; a raw-HTTP run() is never batched, and @batched on one is a load error).
    Such a run() always takes a batch: answered alone, a request is a batch of one."""

    def __init__(self, script: EntryScript) -> None:
        self.script = script
        self.run = script.run
        self.mode: InputMode = detect_input_mode(script.path, script.run)
        self._call = self.mode.target
        self._respond: Callable[[Any], RawResponse] = (
            raw_http_response if isinstance(self.mode, RawHttpMode) else to_response)
        self._batching: Batching | None = None
        if is_batched(script.run) and isinstance(self.mode, (SchemaMode, PlainMode)):
            self._batching = batching_for(self.mode)
        self.batches = self._batching is not None

    def call_init(self) -> None:
        self.script.call_init()

    def handle(self, request: RawRequest) -> RawResponse:
        """The response to one request. While run() runs, the request's id tags what the script logs
        and prints, and what it collects joins the response (see collect.py)."""
        if self._batching is not None:
            return self.handle_batch([request])[0]
        context = RequestContext(request.request_id)
        token = CURRENT.set(context)
        try:
            response = self._answer(request)
        finally:
            CURRENT.reset(token)
        if context.fields:
            response.headers.append(collected_header(context.fields))
        return response

    def handle_batch(self, requests: list[RawRequest]) -> list[RawResponse]:
        """A response per request, in order. Each request is decoded alone, so bad input is its own 400;
        the others share run() calls (batching.py says which can), each response's `batch` the requests
        of its call and `run_ms` that call's time. When run() raises on a batch, each of its requests
        is run again alone, so that only the failing ones get their 500. A result that cannot be split
        into an answer per request is a 500 for every request of the call."""
        if self._batching is None:
            return [self.handle(request) for request in requests]
        responses: list[RawResponse | None] = [None] * len(requests)
        groups: list[list[_Decoded]] = []
        for index, request in enumerate(requests):
            decoded = self._decode(request)
            if isinstance(decoded, RawResponse):
                responses[index] = decoded
                continue
            item = _Decoded(index, request, decoded)
            group = next((group for group in groups if self._batching.joins(group[0].arguments, decoded)), None)
            if group is None:
                groups.append([item])
            else:
                group.append(item)
        for group in groups:
            for item, response in zip(group, self._score(group)):
                responses[item.index] = response
        return responses  # type: ignore[return-value]  # every index is answered above

    def _decode(self, request: RawRequest) -> dict[str, Any] | RawResponse:
        """A request's arguments for a batched run(), decoded under its own id; or its answer (a bad
        input, an OPTIONS)."""
        assert self._batching is not None
        if request.method == "OPTIONS":
            return RawResponse(200, [], b"")
        token = CURRENT.set(RequestContext(request.request_id))
        try:
            _, kwargs = self.mode.arguments(request)  # the schema and plain modes pass keywords only
            return self._batching.checked(kwargs)
        except BadInput as error:
            return error_response(error.status, error.message, run_failed=error.status >= 500)
        finally:
            CURRENT.reset(token)

    def _score(self, group: list[_Decoded]) -> list[RawResponse]:
        """One run() call for the group. The ids of its requests, comma-separated, tag what run() logs
        and prints; what it collects describes the whole call and joins each request's record."""
        context = RequestContext(b",".join(item.request.request_id for item in group))
        token = CURRENT.set(context)
        try:
            responses = self._run_batch(group)
        finally:
            CURRENT.reset(token)
        if responses is None:
            return [response for item in group for response in self._score([item])]
        if context.fields:
            header = collected_header(context.fields)
            for response in responses:
                response.headers.append(header)
        return responses

    def _run_batch(self, group: list[_Decoded]) -> list[RawResponse] | None:
        """The group's responses from one run() call; None when run() raised on a batch of several
        (logged here), for the caller to run each request alone."""
        assert self._batching is not None
        each = [item.arguments for item in group]
        started = time.perf_counter()
        try:
            result = self._call(**self._batching.merge(each))
        except Exception as error:
            if len(group) == 1:
                return [_run_failure(error)]
            logger.warning("run() raised %s on a batch of %d requests (%s); running each of them alone",
                           type(error).__name__, len(group), error)
            return None
        run_ms = (time.perf_counter() - started) * 1000.0
        try:
            results = self._batching.split(result, each)
        except BatchError as error:
            logger.error("%s", error)
            return [_with_batch(error_response(500, str(error), run_failed=True), len(group)) for _ in group]
        return [_with_batch(self._timed_response(answer, run_ms), len(group)) for answer in results]

    def _answer(self, request: RawRequest) -> RawResponse:
        if request.method == "OPTIONS" and not isinstance(self.mode, RawHttpMode):
            return RawResponse(200, [], b"")
        try:
            args, kwargs = self.mode.arguments(request)
        except BadInput as error:
            return error_response(error.status, error.message, run_failed=error.status >= 500)
        started = time.perf_counter()
        try:
            result = self._call(*args, **kwargs)
        except Exception as error:
            return _run_failure(error)
        return self._timed_response(result, (time.perf_counter() - started) * 1000.0)

    def _timed_response(self, result: Any, run_ms: float) -> RawResponse:
        try:
            response = self._respond(result)
        except (NotEncodable, NotHttp) as error:
            logger.error("%s", error)
            return error_response(500, str(error), run_failed=True)
        response.run_ms = run_ms
        return response

    def warm_up(self) -> bool:
        """One run() with the input sample (a batched run(): a batch of one); False when the script has
        no usable sample. Exceptions from run() propagate, and so does a batched run()'s result that
        does not split (BatchError): a failed warm-up is the caller's to report."""
        arguments = self.mode.warmup_arguments()
        if arguments is None:
            return False
        args, kwargs = arguments
        if self._batching is None:
            self._respond(self._call(*args, **kwargs))
            return True
        each = [self._batching.checked(kwargs)]
        self._respond(self._batching.split(self._call(**self._batching.merge(each)), each)[0])
        return True


@dataclass(slots=True)
class _Decoded:
    """A request of a batch, decoded: where its response goes, and run()'s arguments for it."""

    index: int
    request: RawRequest
    arguments: dict[str, Any]


def _run_failure(error: Exception) -> RawResponse:
    """The response when run() raised `error`."""
    if isinstance(error, BadInput):  # BadRequestBody: request.get_json() on a body that is not JSON
        return error_response(error.status, error.message)
    if isinstance(error, (NotEncodable, NotHttp)):  # from an AMLResponse run() made
        logger.error("%s", error)
        return error_response(500, str(error), run_failed=True)
    aborted = _http_exception_response(error)
    if aborted is not None:
        return aborted
    logger.error("run() raised %s", type(error).__name__, exc_info=error)
    return error_response(500, f"{RUN_FAILED_MESSAGE} run() raised {type(error).__name__}.", run_failed=True)


def _with_batch(response: RawResponse, batch: int) -> RawResponse:
    response.batch = batch
    return response


class NotHttp(ValueError):
    """run() answered with a status or a header that HTTP cannot carry."""


INVALID_HEADER = ("run() answered with a response header that is not valid HTTP (a name with a separator, or a "
                  "character outside Latin-1, or a value with a line break or another control character).")
_OMITTED = frozenset({b"content-length", b"x-ms-run-function-failed"})  # the server sets these


def to_response(result: Any) -> RawResponse:
    """run()'s result as a response: a werkzeug Response (an AMLResponse, a Flask Response) as it is,
    anything else as JSON (a tuple too: a JSON array)."""
    response_class = _werkzeug_response_class()
    if response_class is not None and isinstance(result, response_class):
        return _from_werkzeug(result)
    return RawResponse(200, list(JSON), encode_json(result))


def raw_http_response(result: Any) -> RawResponse:
    """A raw-HTTP run()'s result: as to_response, and Flask's tuples besides: `(body, status)`,
    `(body, status, headers)`, `(body, headers)`, where body is a str, bytes, a dict or list (JSON), a
    generator (streamed) or a Response, status an int and headers a dict or a list of pairs. Another
    tuple (an int body, a str status) is a JSON array, as from any other run()."""
    if type(result) is tuple:
        parts = _flask_tuple(result)
        if parts is not None:
            return _from_flask_tuple(*parts)
    return to_response(result)


def message_body(message: Any, json_str: bool = False) -> tuple[bytes | Iterator[Any], bytes]:
    """The body and content type a response message makes: bytes as they are, a str as UTF-8 text (as
    JSON, quoted, with `json_str`), an iterator as it is (streamed: each chunk is encoded as it is sent),
    None as `{}`, anything else as JSON."""
    if isinstance(message, (bytes, bytearray, memoryview)) and not json_str:
        return bytes(message), b"application/octet-stream"
    if isinstance(message, str) and not json_str:
        return message.encode("utf-8"), TEXT[1]
    if isinstance(message, Iterator):
        return message, TEXT[1]
    return encode_json({} if message is None else message), JSON[0][1]


def _werkzeug_response_class() -> type | None:
    """werkzeug's Response once some script imported it; until then, run() cannot have made one."""
    module = sys.modules.get("werkzeug.wrappers.response")
    return None if module is None else module.Response


def _from_werkzeug(response: Any) -> RawResponse:
    """A werkzeug Response: its status, its headers (repeated ones too) and its body, streamed when
    it is an iterable of unknown length (a generator)."""
    status = response.status_code
    _check_status(status)
    failed = status >= 500
    headers = []
    for name, value in _encoded_headers(response.headers.items()):
        if name not in _OMITTED:
            headers.append((name, value))
        elif name == b"x-ms-run-function-failed":  # AMLResponse(..., run_function_failed=True)
            failed = failed or value.lower() == b"true"
    body = _chunks(response.response) if response.is_streamed else response.get_data()
    return RawResponse(status, headers, body, run_failed=failed)


def _flask_tuple(result: tuple[Any, ...]) -> tuple[Any, int | None, Any] | None:
    """(body, status, headers) of a Flask-style tuple, or None when the tuple is not one."""
    if len(result) == 3:
        body, status, headers = result
    elif len(result) == 2 and _is_headers(result[1]):
        (body, headers), status = result, None
    elif len(result) == 2:
        (body, status), headers = result, None
    else:
        return None
    if status is not None and (type(status) is not int):
        return None
    if headers is not None and not _is_headers(headers):
        return None
    response_class = _werkzeug_response_class()
    if not (isinstance(body, (str, bytes, bytearray, dict, list, Iterator))
            or (response_class is not None and isinstance(body, response_class))):
        return None
    return body, status, headers


def _is_headers(value: Any) -> bool:
    return isinstance(value, list) or callable(getattr(value, "items", None))


def _from_flask_tuple(body: Any, status: int | None, headers: Any) -> RawResponse:
    """A Flask-style tuple's response; its headers replace those of the same name that body brings."""
    response_class = _werkzeug_response_class()
    if response_class is not None and isinstance(body, response_class):
        response = _from_werkzeug(body)
    else:
        content, content_type = message_body(body)
        response = RawResponse(200, [(b"content-type", content_type)],
                               content if isinstance(content, bytes) else _chunks(content))
    if status is not None:
        _check_status(status)
        response.status = status
        response.run_failed = response.run_failed or status >= 500
    if headers:
        given = _encoded_headers(headers if isinstance(headers, list) else headers.items())
        names = {name for name, _ in given}
        response.headers = [item for item in response.headers if item[0] not in names]
        response.headers.extend(item for item in given if item[0] not in _OMITTED)
    return response


def _check_status(status: int) -> None:
    if not 200 <= status <= 599:
        raise NotHttp(f"run() answered with status {status}; a response's status must be from 200 to 599.")


def _encoded_headers(items: Iterable[Any]) -> list[tuple[bytes, bytes]]:
    """Header (name, value) pairs as lower-case bytes, refused (NotHttp) unless HTTP can carry them."""
    items = list(items)
    try:
        headers = [(str(name).lower().encode("latin-1"), str(value).encode("latin-1")) for name, value in items]
    except (UnicodeEncodeError, ValueError, TypeError):
        headers = None
    if headers is None or not _valid_headers(headers):
        logger.error("run()'s response headers: %r", items)
        raise NotHttp(INVALID_HEADER)
    return headers


def _http_exception_response(error: Exception) -> RawResponse | None:
    """A werkzeug HTTPException run() raised (`abort(404)`, or get_json()'s 415) as its status and
    `{"message": description}`; None for any other exception, or one that carries no usable status."""
    module = sys.modules.get("werkzeug.exceptions")
    if module is None or not isinstance(error, module.HTTPException):
        return None
    try:
        if error.response is not None:  # abort(response)
            return to_response(error.response)
        if error.code is None:
            return None
        _check_status(error.code)
        headers = [item for item in _encoded_headers(error.get_headers()) if item[0] != b"content-type"]
    except (NotHttp, NotEncodable):
        return None
    message = error.description or error.name
    return RawResponse(error.code, [*JSON, *headers], encode_json({"message": message}),
                       run_failed=error.code >= 500)


def _valid_headers(headers: list[tuple[bytes, bytes]]) -> bool:
    """Names of token characters only, values without control characters but tab: a line break in a
    value would let run() add headers, or a second response. (The server writes headers as they are.)"""
    names = b"".join([name for name, _ in headers])
    values = b"".join([value for _, value in headers])
    return not (_BAD_NAME.search(names) or _BAD_VALUE.search(values))


_BAD_NAME = re.compile(rb'[\x00-\x20\x7f()<>@,;:\\"/\[\]?={}]')  # RFC 9110: not a token character
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _chunks(message: Iterable[Any]) -> Iterator[bytes]:
    for chunk in message:
        if isinstance(chunk, (bytes, bytearray, memoryview)):
            yield bytes(chunk)
        elif isinstance(chunk, str):
            yield chunk.encode("utf-8")
        else:
            yield encode_json(chunk)
