# A @rawhttp script written against the Azure import paths.
from azureml.contrib.services.aml_request import AMLRequest, rawhttp
from azureml.contrib.services.aml_response import AMLResponse


def init():
    pass


@rawhttp
def run(request):
    assert isinstance(request, AMLRequest)
    if request.method == "OPTIONS":
        return AMLResponse("options handled by run()", 200)
    mode = request.args.get("mode")
    if mode == "stream":
        return AMLResponse((f"chunk-{i};" for i in range(5)), 200, {"Content-Type": "text/plain"})
    if mode == "status":
        return AMLResponse({"teapot": True}, 418, {"X-From-Run": "yes", "x-request-id": "run-cannot-set-this"})
    if mode == "json":
        return {"json": request.get_json(), "is_json": request.is_json}
    if mode == "no-content":  # a body on a 204 is not sent
        return AMLResponse("dropped", int(request.args.get("status", "204")))
    if mode == "bad-status":
        return AMLResponse("no such status", int(request.args.get("status", "999")))
    if mode == "bad-header":  # a header value that would split the response
        return AMLResponse("never sent", 200, {"X-Bad": "one\r\nInjected: two"})
    if mode == "euro-header":  # not Latin-1
        return AMLResponse("never sent", 200, {"X-Price": "5 \u20ac"})
    if mode == "bad-header-name":
        return AMLResponse("never sent", 200, {"X Bad: name": "v"})
    if mode == "fail-status":
        return AMLResponse("upstream broke", 502)
    if request.method == "GET":
        return {"method": "GET", "args": dict(request.args), "path": request.path}
    body = request.get_data()
    return AMLResponse(body, 200, {"Content-Type": request.headers.get("Content-Type", "application/octet-stream")})
