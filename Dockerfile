# The mlscore runtime image: mlscore in a virtual environment, serving the entry script in
# /var/azureml-app on port 5001 as a non-root user (uid 1000).
#
#   docker build -t mlscore .
#   docker run -p 5001:5001 -v "$PWD/examples/diabetes:/var/azureml-app:ro" \
#       -e AZUREML_MODEL_DIR=/var/azureml-app/models mlscore
#
# Build arguments: BASE_IMAGE, any Debian-like image with python3 (3.10 or later) and its venv
# module; MLSCORE_EXTRAS, mlscore's extras to install too ("examples" brings scikit-learn and joblib);
# PIP_INDEX_URL, PIP_EXTRA_INDEX_URL and PIP_TRUSTED_HOST, for a package mirror. Behind a proxy that
# re-signs TLS, pass its CA bundle as the build secret `pip-ca`
# (`--secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt`): pip uses it and no layer keeps it.

ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG MLSCORE_EXTRAS=""
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST

ENV VIRTUAL_ENV=/opt/mlscore \
    PATH=/opt/mlscore/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A virtual environment works the same on every base: no clash with the distribution's own Python
# packages (PEP 668) and no `python` vs `python3` guesswork.
RUN python3 -m venv /opt/mlscore \
    && (getent passwd 1000 >/dev/null || useradd --uid 1000 --create-home --shell /usr/sbin/nologin mlscore)

COPY . /src
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && pip install --no-cache-dir --disable-pip-version-check "/src${MLSCORE_EXTRAS:+[$MLSCORE_EXTRAS]}" \
    && rm -rf /src

# The app and its models are mounted or copied here; AZUREML_MODEL_DIR says where the models are.
# MLSCORE_PORT stays an environment variable so that host networking can move the port.
ENV AML_APP_ROOT=/var/azureml-app \
    AZUREML_ENTRY_SCRIPT=score.py \
    MLSCORE_PORT=5001
WORKDIR /var/azureml-app
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 1000
EXPOSE 5001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MLSCORE_PORT', '5001') + '/health/live', timeout=2)"]
CMD ["mlscore", "serve", "--host", "0.0.0.0"]
