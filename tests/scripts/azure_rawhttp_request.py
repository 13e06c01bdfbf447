# A @rawhttp entry script that answers with what it sees of the request, through the Flask/werkzeug
# request API that Azure hands such scripts, on the import paths Azure's current documents use.
#   any method, no ?strict  -> 200 JSON: method, url, base_url, path, full_path, query_string,
#       headers (the request's headers, in order, as [name, value] pairs from `for name, value in
#       request.headers`), args (name -> getlist), form (name -> getlist), values (name -> getlist),
#       files (name -> {filename, content_type, size, sha256}), data (request.data, Latin-1 text),
#       json_silent (get_json(silent=True)), json_forced (get_json(force=True, silent=True)),
#       is_json, content_type, mimetype, remote_addr, host, scheme, environ (a few WSGI keys),
#       request_type (type(request).__name__), same_class (the azureml.contrib and the
#       azureml_inference_server_http AMLRequest are one class)
#   ?strict=1               -> 200 {"json": request.get_json()}; a body that is not JSON: 400; a
#                              content type that is not JSON: 415 (werkzeug's), {"message": ...}
import hashlib

from azureml.contrib.services.aml_request import AMLRequest as ContribRequest
from azureml_inference_server_http.api.aml_request import AMLRequest, rawhttp

ENVIRON_KEYS = ["REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT",
                "REMOTE_ADDR", "CONTENT_TYPE", "CONTENT_LENGTH", "wsgi.url_scheme"]


def init():
    pass


@rawhttp
def run(request):
    if request.args.get("strict"):
        return {"json": request.get_json()}
    files = {}
    for name, storage in request.files.items():
        data = storage.read()
        files[name] = {"filename": storage.filename, "content_type": storage.mimetype, "size": len(data),
                       "sha256": hashlib.sha256(data).hexdigest()}
    return {
        "method": request.method,
        "url": request.url,
        "base_url": request.base_url,
        "path": request.path,
        "full_path": request.full_path,
        "query_string": request.query_string.decode("latin-1"),
        "headers": [[name, value] for name, value in request.headers],
        "args": {name: request.args.getlist(name) for name in request.args},
        "form": {name: request.form.getlist(name) for name in request.form},
        "values": {name: request.values.getlist(name) for name in request.values},
        "files": files,
        "data": request.data.decode("latin-1"),
        "json_silent": request.get_json(silent=True),  # first: werkzeug caches what get_json() parsed
        "json_forced": request.get_json(force=True, silent=True),
        "is_json": request.is_json,
        "content_type": request.content_type,
        "mimetype": request.mimetype,
        "remote_addr": request.remote_addr,
        "host": request.host,
        "scheme": request.scheme,
        "environ": {key: request.environ.get(key) for key in ENVIRON_KEYS},
        "request_type": type(request).__name__,
        "same_class": ContribRequest is AMLRequest and isinstance(request, AMLRequest),
    }
