# Written the way Azure's documents write scripts that find their files: through AML_APP_ROOT (which
# Azure always sets) and AZUREML_MODEL_DIR. init() fails if the server did not set them.
import json
import os


def init():
    global labels
    with open(os.path.join(os.environ["AML_APP_ROOT"], "labels.json")) as file:
        labels = json.load(file)


def run(data):
    return {
        "labels": labels,
        "pid": os.getpid(),
        **{name: os.environ.get(name) for name in ("AML_APP_ROOT", "AZUREML_ENTRY_SCRIPT", "AZUREML_MODEL_DIR")},
    }
