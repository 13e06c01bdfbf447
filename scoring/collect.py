"""Extra named fields for model data collection, recorded from inside run():

    from mlscore.scoring.collect import collect

    def run(data):
        features = prepare(data)
        collect("features", features)      # anything JSON-able: numpy and pandas too
        return model.predict(features)

They join the request's record (its input and output are recorded anyway) under `fields`. Without
data collection (`--collect-data`), and outside run(), collect() does nothing. The fields travel
back to the front process with the response, in a header the front takes off before answering.
"""

from __future__ import annotations

import logging
from typing import Any

from mlscore.scoring.encoding import NotEncodable, encode_json
from mlscore.scoring.request_context import CURRENT

COLLECTED_HEADER = b"x-mlscore-collected"  # internal: never reaches a client
logger = logging.getLogger("mlscore.scoring")
_enabled = False


def enable() -> None:
    """Data collection is on in this server: collect() records from now on (in this process)."""
    global _enabled
    _enabled = True


def collect(name: str, value: Any) -> None:
    """Attach `value` to the current request's data-collection record as `fields[name]`; a later
    call with the same name replaces it."""
    if not _enabled:
        return
    context = CURRENT.get()
    if context is None:
        return
    if context.fields is None:
        context.fields = {}
    context.fields[str(name)] = value


def collected_header(fields: dict[str, Any]) -> tuple[bytes, bytes]:
    """The fields as the internal header's JSON; a field with no JSON form is left out, with a warning
    (a collection problem never fails the request)."""
    try:
        return COLLECTED_HEADER, encode_json(fields)
    except NotEncodable:
        kept = {}
        for name, value in fields.items():
            try:
                encode_json(value)
            except NotEncodable:
                logger.warning("collect(%r, <a %s>): it has no JSON form, so it is left out of the data-collection "
                               "record", name, type(value).__name__)
                continue
            kept[name] = value
        return COLLECTED_HEADER, encode_json(kept)
