# A @rawhttp entry script that answers each kind of response a script written for Azure (or Flask)
# returns, picked by ?kind=, on the import paths Azure's current documents use.
#   aml-none          AMLResponse(None, 333)                       -> 333 {}
#   aml-text          AMLResponse("test", 444)                     -> 444 test (text/plain)
#   aml-json-str      AMLResponse("test", 555, json_str=True)      -> 555 "test" (JSON), run failed
#   aml-bytes         AMLResponse(b"\x00\x01\xff", 200)            -> 200 the 3 bytes (application/octet-stream)
#   aml-dict          AMLResponse({"a": 1}, 201)                   -> 201 {"a": 1}
#   aml-commas        AMLResponse("csv", 200, {"Content-Type": "text/csv", "X-Multi": "a, b"})
#                                                                  -> 200, text/csv, two X-Multi headers a and b
#   aml-headers-kw    AMLResponse("kw", 200, headers={"X-Kw": "yes"})       -> 200 kw, X-Kw: yes
#   aml-run-failed    AMLResponse("soft", 200, run_function_failed=True)    -> 200 soft, run failed
#   aml-stream        AMLResponse(generator of "part-0;".."part-2;", 200)   -> 200, streamed
#   werkzeug          werkzeug Response("wz", 202, repeated X-Rep 1 and 2)  -> 202 wz, two X-Rep headers
#   flask             flask Response('{"f": 1}', 203, application/json)     -> 203 {"f": 1}
#   tuple-status      ("made", 201)                                -> 201 made
#   tuple-headers     ({"h": 1}, {"X-T": "1"})                     -> 200 {"h": 1}, X-T: 1
#   tuple-full        (b"raw", 206, [("X-T", "2"), ("X-T", "3")])  -> 206 raw, two X-T headers
#   tuple-response    (werkzeug Response("r", 200), 299, {"X-R": "r"}) -> 299 r, X-R: r
#   tuple-stream      (generator of "g0;".."g2;", 200)             -> 200, streamed
#   tuple-list        ([1, 2], 207)                                -> 207 [1, 2]
#   not-flask-tuple   (1, 2, 3)                                    -> 200 [1, 2, 3] (a JSON array)
#   abort-404         werkzeug.exceptions.abort(404)               -> 404 {"message": werkzeug's description}
#   abort-418         abort(418, description="short and stout")    -> 418 {"message": "short and stout"}
#   abort-405         raise MethodNotAllowed(["GET"])              -> 405 with Allow: GET
#   bad-tuple-status  ("x", 42)                                    -> 500 naming status 42
#   (none)            {"kind": None}                               -> 200 JSON
from azureml_inference_server_http.api.aml_request import rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse
from werkzeug.exceptions import MethodNotAllowed, abort
from werkzeug.wrappers import Response


def init():
    pass


def _flask_response():
    import flask

    return flask.Response('{"f": 1}', 203, mimetype="application/json")


@rawhttp
def run(request):
    kind = request.args.get("kind")
    if kind == "aml-none":
        return AMLResponse(None, 333)
    if kind == "aml-text":
        return AMLResponse("test", 444)
    if kind == "aml-json-str":
        return AMLResponse("test", 555, json_str=True)
    if kind == "aml-bytes":
        return AMLResponse(b"\x00\x01\xff", 200)
    if kind == "aml-dict":
        return AMLResponse({"a": 1}, 201)
    if kind == "aml-commas":
        return AMLResponse("csv", 200, {"Content-Type": "text/csv", "X-Multi": "a, b"})
    if kind == "aml-headers-kw":
        return AMLResponse("kw", 200, headers={"X-Kw": "yes"})
    if kind == "aml-run-failed":
        return AMLResponse("soft", 200, run_function_failed=True)
    if kind == "aml-stream":
        return AMLResponse((f"part-{i};" for i in range(3)), 200)
    if kind == "werkzeug":
        return Response("wz", 202, [("X-Rep", "1"), ("X-Rep", "2")])
    if kind == "flask":
        return _flask_response()
    if kind == "tuple-status":
        return "made", 201
    if kind == "tuple-headers":
        return {"h": 1}, {"X-T": "1"}
    if kind == "tuple-full":
        return b"raw", 206, [("X-T", "2"), ("X-T", "3")]
    if kind == "tuple-response":
        return Response("r", 200), 299, {"X-R": "r"}
    if kind == "tuple-stream":
        return (f"g{i};" for i in range(3)), 200
    if kind == "tuple-list":
        return [1, 2], 207
    if kind == "not-flask-tuple":
        return 1, 2, 3
    if kind == "abort-404":
        abort(404)
    if kind == "abort-418":
        abort(418, description="short and stout")
    if kind == "abort-405":
        raise MethodNotAllowed(["GET"])
    if kind == "bad-tuple-status":
        return "x", 42
    return {"kind": kind}
