"""Stand-ins for the `azureml.*` modules that entry scripts import (see compat.py)."""
