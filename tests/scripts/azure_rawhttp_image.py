# A @rawhttp entry script in the style of Azure's documents (binary data, multipart upload), on the
# import paths its current documents use.
#   GET  /score?...                        -> the request's full path, as bytes (text/plain)
#   POST /score (multipart: file "image", field "caption")
#                                          -> 200 JSON {"filename", "content_type", "size", "sha256", "caption"}
#   POST /score without an "image" file   -> 400 JSON {"error": "..."}
#   any other method                      -> 500 "bad request"
import hashlib

from azureml_inference_server_http.api.aml_request import AMLRequest, rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse


def init():
    print("This is init()")


@rawhttp
def run(request: AMLRequest):
    print("This is run()")
    if request.method == "GET":
        return AMLResponse(str.encode(request.full_path), 200, {"Content-Type": "text/plain"})
    if request.method == "POST":
        if "image" not in request.files:
            return AMLResponse({"error": "send the image as the multipart file 'image'"}, 400)
        image = request.files["image"]
        data = image.read()
        return AMLResponse({
            "filename": image.filename,
            "content_type": image.mimetype,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "caption": request.form.get("caption", ""),
        }, 200)
    return AMLResponse("bad request", 500)
