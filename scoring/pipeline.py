"""The scoring pipeline: one function from a raw request to a raw response (decode, input mode,
run(), encode), independent of the server process so that it can run inside a worker."""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Iterable, Iterator, Protocol

from mlscore.scoring.azureml_compat.aml_request import BadRequestBody
from mlscore.scoring.azureml_compat.aml_response import AMLResponse
from mlscore.scoring.collect import collected_header
from mlscore.scoring.encoding import NotEncodable, encode_json
from mlscore.scoring.entry_script import EntryScript
from mlscore.scoring.input_modes import BadInput, InputMode, RawHttpMode, detect_input_mode
from mlscore.scoring.messages import RawRequest, RawResponse
from mlscore.scoring.request_context import CURRENT, RequestContext

logger = logging.getLogger("mlscore.scoring")

JSON = [(b"content-type", b"application/json")]
TEXT = (b"content-type", b"text/plain; charset=utf-8")
RUN_FAILED_MESSAGE = "An unexpected error occurred in scoring script. Check the logs for more info."


def error_response(status: int, message: str, run_failed: bool = False) -> RawResponse:
    return RawResponse(status, list(JSON), encode_json({"message": message}), run_failed=run_failed)


class Scorer(Protocol):
    """What an executor needs of a pipeline: an entry script's (below) or a model's (onnx_model.py)."""

    def handle(self, request: RawRequest) -> RawResponse: ...


class ScoringPipeline:
    """Scores requests for one loaded entry script."""

    def __init__(self, script: EntryScript) -> None:
        self.script = script
        self.run = script.run
        self.mode: InputMode = detect_input_mode(script.path, script.run)
        self._call = self.mode.target

    def call_init(self) -> None:
        self.script.call_init()

    def handle(self, request: RawRequest) -> RawResponse:
        """The response to one request. While run() runs, the request's id tags what the script logs
        and prints, and what it collects joins the response (see collect.py)."""
        context = RequestContext(request.request_id)
        token = CURRENT.set(context)
        try:
            response = self._answer(request)
        finally:
            CURRENT.reset(token)
        if context.fields:
            response.headers.append(collected_header(context.fields))
        return response

    def _answer(self, request: RawRequest) -> RawResponse:
        if request.method == "OPTIONS" and not isinstance(self.mode, RawHttpMode):
            return RawResponse(200, [], b"")
        try:
            args, kwargs = self.mode.arguments(request)
        except BadInput as error:
            return error_response(error.status, error.message)
        started = time.perf_counter()
        try:
            result = self._call(*args, **kwargs)
        except BadRequestBody as error:
            return error_response(400, str(error))
        except BadInput as error:
            return error_response(error.status, error.message)
        except Exception as error:
            logger.exception("run() raised %s", type(error).__name__)
            return error_response(500, f"{RUN_FAILED_MESSAGE} run() raised {type(error).__name__}.", run_failed=True)
        run_ms = (time.perf_counter() - started) * 1000.0
        try:
            response = _to_response(result)
        except (NotEncodable, NotHttp) as error:
            logger.error("%s", error)
            return error_response(500, str(error), run_failed=True)
        response.run_ms = run_ms
        return response

    def warm_up(self) -> bool:
        """One run() with the input sample; False when the script has no usable sample.
        Exceptions from run() propagate: a failed warm-up is the caller's to report."""
        arguments = self.mode.warmup_arguments()
        if arguments is None:
            return False
        args, kwargs = arguments
        encode_json(self._call(*args, **kwargs))
        return True


class NotHttp(ValueError):
    """run() answered with a status or a header that HTTP cannot carry."""


def _to_response(result: Any) -> RawResponse:
    if not isinstance(result, AMLResponse):
        return RawResponse(200, list(JSON), encode_json(result))
    if not 200 <= result.status_code <= 599:
        raise NotHttp(f"run() answered with status {result.status_code}; a response's status must be from 200 to 599.")
    try:
        headers = [(name.lower().encode("latin-1"), str(value).encode("latin-1"))
                   for name, value in result.headers.items()]
    except UnicodeEncodeError:
        headers = None
    if headers is None or not _valid_headers(headers):
        logger.error("run()'s response headers: %r", result.headers)
        raise NotHttp("run() answered with a response header that is not valid HTTP (a name with a separator, or a "
                      "character outside Latin-1, or a value with a line break or another control character).")
    body, content_type = _aml_body(result)
    if content_type is not None and not any(name == b"content-type" for name, _ in headers):
        headers.append(content_type)
    return RawResponse(result.status_code, headers, body, run_failed=result.status_code >= 500)


def _valid_headers(headers: list[tuple[bytes, bytes]]) -> bool:
    """Names of token characters only, values without control characters but tab: a line break in a
    value would let run() add headers, or a second response. (The server writes headers as they are.)"""
    names = b"".join([name for name, _ in headers])
    values = b"".join([value for _, value in headers])
    return not (_BAD_NAME.search(names) or _BAD_VALUE.search(values))


_BAD_NAME = re.compile(rb'[\x00-\x20\x7f()<>@,;:\\"/\[\]?={}]')  # RFC 9110: not a token character
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _aml_body(result: AMLResponse) -> tuple[bytes | Iterator[bytes], tuple[bytes, bytes] | None]:
    message = result.message
    if isinstance(message, (bytes, bytearray, memoryview)):
        return bytes(message), (b"content-type", b"application/octet-stream")
    if isinstance(message, str) and not result.json_str:
        return message.encode("utf-8"), TEXT
    if isinstance(message, Iterator):  # generators stream
        return _chunks(message), None
    return encode_json({} if message is None else message), JSON[0]


def _chunks(message: Iterable[Any]) -> Iterator[bytes]:
    for chunk in message:
        if isinstance(chunk, (bytes, bytearray, memoryview)):
            yield bytes(chunk)
        elif isinstance(chunk, str):
            yield chunk.encode("utf-8")
        else:
            yield encode_json(chunk)
