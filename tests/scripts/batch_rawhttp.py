# @batched on a raw-HTTP run(): a load error.
from azureml_inference_server_http.api.aml_request import rawhttp

from mlscore import batched


@batched
@rawhttp
def run(request):
    return request.get_data()
