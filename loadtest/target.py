"""What a load test sends: the scoring URL split into origin and path, the request body and its
headers. The body comes from a file, else from the service itself: the example in its Swagger
document for `/score`, or zeros of each input's shape from the Open Inference Protocol's model
metadata for `/v2/models/NAME/infer`. Standard library only, so the locust process and the
`mlscore loadtest` process both use it."""

from __future__ import annotations

import json
import mimetypes
import re
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlscore.deploy.profile import swagger_example

DEFAULT_PATH = "/score"
JSON = "application/json"
FETCH_TIMEOUT_S = 10.0
KEY_ENV = "MLSCORE_LOADTEST_KEY"  # a key in the environment stays off command lines that others can read
V2_INFER = re.compile(r"^(?P<model>.*/v2/models/[^/]+(?:/versions/[^/]+)?)/infer$")
# Zeros (or their like) for each Open Inference Protocol datatype, as JSON data.
_V2_ZERO: dict[str, Any] = {"BOOL": False, "BYTES": ""}

# A load test of one's own service often runs against a self-signed certificate (mlscore --ssl-cert);
# locust's FastHttpUser does not verify certificates either, so the request it gets ready matches what it sends.
_UNVERIFIED = ssl.create_default_context()
_UNVERIFIED.check_hostname = False
_UNVERIFIED.verify_mode = ssl.CERT_NONE


class TargetError(ValueError):
    """The URL is unusable, or no request body could be made; the message says what to give instead."""


@dataclass(frozen=True)
class Target:
    """The one request every simulated user sends."""

    origin: str  # scheme://host[:port]
    path: str  # with the query string, if any
    body: bytes
    content_type: str
    source: str  # where the body came from, for the report
    key: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self.origin + self.path

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": self.content_type}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        return headers


def split_url(url: str, path: str | None = None) -> tuple[str, str]:
    """`(origin, path)` of a scoring URL; `path` (when given) wins over the URL's own, and a URL
    without one scores on /score."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TargetError(f"{url!r} is not an http(s) URL (e.g. http://127.0.0.1:5001/score)")
    own = parts.path + (f"?{parts.query}" if parts.query else "")
    path = path or (own if parts.path not in ("", "/") else DEFAULT_PATH)
    return f"{parts.scheme}://{parts.netloc}", path if path.startswith("/") else "/" + path


def resolve(url: str, *, path: str | None = None, payload: Path | None = None, content_type: str | None = None,
            key: str | None = None) -> Target:
    """The request to send to `url`: the payload file's bytes when given, else a body made from
    what the service describes about itself (one or two GETs, sent with the key)."""
    origin, path = split_url(url, path)
    if payload is not None:
        body, content_type, source = _from_file(payload, content_type)
        return Target(origin, path, body, content_type, source, key)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    infer = V2_INFER.match(path.split("?", 1)[0])
    if infer:
        metadata_url = origin + infer.group("model")
        body = v2_request(_get_json(metadata_url, headers))
        return Target(origin, path, json.dumps(body).encode(), JSON, f"zeros of the inputs {metadata_url} lists", key)
    swagger_url, example = _swagger_example(origin, path, headers)
    return Target(origin, path, json.dumps(example).encode(), content_type or JSON, f"the example in {swagger_url}",
                  key)


def v2_request(metadata: dict[str, Any]) -> dict[str, Any]:
    """An Open Inference Protocol infer request from a model's metadata (`GET /v2/models/NAME`): each
    input filled with zeros of its shape, dynamic dimensions (-1) taken as 1."""
    inputs = metadata.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise TargetError("the model's metadata lists no inputs; give a request body with --payload FILE")
    tensors = []
    for tensor in inputs:
        try:
            name, datatype = str(tensor["name"]), str(tensor["datatype"])
            shape = [dim if int(dim) >= 0 else 1 for dim in tensor["shape"]]
        except (KeyError, TypeError, ValueError):
            raise TargetError(f"the model's metadata has an input without a name, datatype and shape: {tensor!r}; "
                              "give a request body with --payload FILE") from None
        tensors.append({"name": name, "shape": shape, "datatype": datatype,
                        "data": [_V2_ZERO.get(datatype, 0)] * prod(shape)})
    return {"inputs": tensors}


def _from_file(payload: Path, content_type: str | None) -> tuple[bytes, str, str]:
    try:
        body = payload.read_bytes()
    except OSError as error:
        raise TargetError(f"--payload {payload}: cannot be read: {error.strerror or error}") from None
    guessed, _ = mimetypes.guess_type(payload.name)
    return body, content_type or guessed or JSON, f"the file {payload}"


def _swagger_example(origin: str, path: str, headers: dict[str, str]) -> tuple[str, Any]:
    """The Swagger document beside the scoring path (…/score → …/swagger.json, as Azure's services
    under a path prefix serve it), else at the origin, and the example it gives for the request."""
    beside = path.split("?", 1)[0].rsplit("/", 1)[0] + "/swagger.json"
    candidates = dict.fromkeys([origin + beside, origin + "/swagger.json"])
    problems = []
    for url in candidates:
        try:
            example = swagger_example(_get_json(url, headers))
        except TargetError as error:
            problems.append(str(error))
            continue
        if example is not None:
            return url, example
        problems.append(f"{url} has no request example (the entry script's run() has no input sample)")
    raise TargetError(f"nothing to send: {'; '.join(problems)}. Give a request body with --payload FILE")


def _get_json(url: str, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(url, headers={"Accept": JSON, **headers})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S, context=_UNVERIFIED) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise TargetError(f"GET {url} answered {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TargetError(f"GET {url} failed: {reason}") from None
    except ValueError:
        raise TargetError(f"GET {url} did not answer JSON") from None


def send_once(target: Target) -> tuple[int, bytes]:
    """POST the target's request once: its status and body (an error status is an answer too)."""
    request = urllib.request.Request(target.url, data=target.body, headers=target.headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S, context=_UNVERIFIED) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, OSError) as error:
        raise TargetError(f"POST {target.url} failed: {getattr(error, 'reason', error)}") from None
