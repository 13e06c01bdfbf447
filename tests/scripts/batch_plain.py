# A batched plain run(data): a list of the bodies in, a list of answers out. A body "boom" makes it
# raise, a body "short" makes it answer one answer too few. It collects the request id it runs under.
from mlscore import batched
from mlscore.scoring.collect import collect
from mlscore.scoring.request_context import current_request_id

CALLS = []


@batched
def run(data, request_headers):
    CALLS.append(len(data))
    collect("ids", current_request_id())
    if "boom" in data:
        raise ValueError("boom")
    answers = [{"upper": body.upper(), "id": headers.get("X-Ms-Request-Id")}
               for body, headers in zip(data, request_headers)]
    return answers[:-1] if "short" in data else answers
