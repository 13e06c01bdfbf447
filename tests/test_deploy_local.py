"""The local deploy target end to end, through the command line: deploy, score, update under traffic
with no failed request, a failed start and a failed update, delete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import httpx
import pytest

from mlscore.deploy import InferenceConfig, LocalWebservice, Model, Workspace

SCRIPT = '''
import os
import time

def init():
    global answer
    time.sleep(float(os.environ.get("SLOW_INIT_S", "0")))  # a model that takes a while to load
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model.txt")
    answer = open(path).read().strip()
    if answer == "broken":
        raise ValueError("this model version is broken")

def run(data):
    return {"model": answer, "pid": os.getpid()}
'''


def mlscore(home: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "mlscore", *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "MLSCORE_HOME": str(home), **(env or {})})
    if check and done.returncode != 0:
        raise AssertionError(f"mlscore {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An app folder with the entry script and configs, and a registry with three versions of `m`."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "score.py").write_text(SCRIPT)
    (tmp_path / "ic.json").write_text(json.dumps({"entryScript": "score.py", "sourceDirectory": "app"}))
    (tmp_path / "dc.json").write_text(json.dumps({"computeType": "local"}))
    home = tmp_path / "home"
    for content in ("one", "two", "broken"):
        model = tmp_path / "model.txt"
        model.write_text(content)
        mlscore(home, "model", "register", "-n", "m", "-p", str(model))
    return tmp_path


def deploy(project: Path, name: str, *models: str, check: bool = True,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    flags = [flag for model in models for flag in ("-m", model)]
    return mlscore(project / "home", "deploy", "-n", name, *flags, "--ic", str(project / "ic.json"),
                   "--dc", str(project / "dc.json"), check=check, env=env)


def show(project: Path, name: str) -> dict:
    return json.loads(mlscore(project / "home", "service", "show", name, "--json").stdout)


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


class Traffic:
    """Clients posting in a loop on kept-alive connections until stopped; every outcome recorded,
    and each client's latest answer."""

    def __init__(self, url: str, clients: int = 3, fresh_connections: int = 0) -> None:
        """`clients` on kept-alive connections, and `fresh_connections` more that open one per request."""
        self.url, self.answers, self.errors = url, [], []
        self.latest: list[httpx.Response | None] = [None] * (clients + fresh_connections)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(index, index >= clients), daemon=True)
                         for index in range(clients + fresh_connections)]
        for thread in self._threads:
            thread.start()

    def _loop(self, index: int, fresh: bool) -> None:
        headers = {"connection": "close"} if fresh else {}
        with httpx.Client(timeout=30, headers=headers) as client:
            while not self._stop.is_set():
                try:
                    answer = client.post(self.url, json={"data": 1})
                except httpx.HTTPError as error:
                    self.errors.append(repr(error))
                    continue
                self.answers.append(answer)
                self.latest[index] = answer

    def every_client_answered_by(self, model: str) -> bool:
        return all(answer is not None and answer.json()["model"] == model for answer in self.latest)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def test_deploy_score_update_under_traffic_and_delete(project: Path) -> None:
    home = project / "home"
    done = deploy(project, "svc", "m:1")
    assert "Healthy, scoring at http://127.0.0.1:" in done.stdout
    record = show(project, "svc")
    uri = record["details"]["scoring_uri"]
    assert record["state"] == "Healthy" and record["models"] == ["m:1"] and "keys" not in record["details"]
    assert httpx.post(uri, json={"data": 1}).json()["model"] == "one"
    refused = mlscore(home, "model", "delete", "m:1", check=False)
    assert refused.returncode == 1 and "used by service(s) svc" in refused.stderr

    traffic = Traffic(uri)
    try:
        wait_until(lambda: len(traffic.answers) > 20 and traffic.every_client_answered_by("one"))
        done = mlscore(home, "service", "update", "svc", "-m", "m:2")
        wait_until(lambda: traffic.every_client_answered_by("two"))  # the old generation may still drain
    finally:
        traffic.stop()
    assert "starting generation 2 beside the one serving" in done.stdout
    assert traffic.errors == []
    assert {answer.status_code for answer in traffic.answers} == {200}
    models = [answer.json()["model"] for answer in traffic.answers]
    assert models[0] == "one" and models[-1] == "two" and len(models) > 20
    assert show(project, "svc")["models"] == ["m:2"]
    assert show(project, "svc")["details"]["scoring_uri"] == uri  # the same port
    mlscore(home, "model", "delete", "m:1")  # no longer used

    assert "serving" in mlscore(home, "service", "logs", "svc", "--tail", "5").stdout
    listed = mlscore(home, "service", "list").stdout
    assert "svc" in listed and "Healthy" in listed and "m:2" in listed

    mlscore(home, "service", "delete", "svc")
    with pytest.raises(httpx.ConnectError):
        httpx.post(uri, json={"data": 1})
    assert "no services" in mlscore(home, "service", "list").stdout
    mlscore(home, "model", "delete", "m:2")


def test_five_updates_under_steady_traffic_drop_nothing_even_with_a_slow_init(project: Path) -> None:
    # init() takes 1.5 s: a generation that accepted connections before it was ready would refuse them.
    slow = {"SLOW_INIT_S": "1.5"}
    home = project / "home"
    deploy(project, "svc", "m:1", env=slow)
    uri = show(project, "svc")["details"]["scoring_uri"]
    traffic = Traffic(uri, clients=4, fresh_connections=4)
    try:
        for version, model, succeeds in (("m:2", "two", True), ("m:1", "one", True), ("m:3", "one", False),
                                         ("m:2", "two", True), ("m:1", "one", True)):
            count = len(traffic.answers)
            done = mlscore(home, "service", "update", "svc", "-m", version, check=False, env=slow)
            assert done.returncode == (0 if succeeds else 1), done.stderr
            wait_until(lambda: traffic.every_client_answered_by(model) and len(traffic.answers) > count + 16)
    finally:
        traffic.stop()
        mlscore(home, "service", "delete", "svc")
    assert traffic.errors == []
    assert {answer.status_code for answer in traffic.answers} == {200}, [
        answer.text for answer in traffic.answers if answer.status_code != 200][:3]
    assert len({answer.json()["pid"] for answer in traffic.answers}) == 5  # the first and four updates


def test_webservice_update_in_the_python_api_drops_nothing_either(project: Path, monkeypatch) -> None:
    monkeypatch.setenv("SLOW_INIT_S", "1.5")
    monkeypatch.chdir(project / "app")
    ws = Workspace(project / "home")
    service = Model.deploy(ws, "api", [Model(ws, "m", 1)], InferenceConfig(entry_script="score.py"),
                           LocalWebservice.deploy_configuration())
    traffic = None
    try:
        service.wait_for_deployment()
        traffic = Traffic(service.scoring_uri, clients=4, fresh_connections=4)
        for version, model in ((2, "two"), (3, "two"), (1, "one")):  # version 3's init() fails
            count = len(traffic.answers)
            service.update(models=[Model(ws, "m", version)])
            assert (service.error is None) == (version != 3), service.error
            wait_until(lambda: traffic.every_client_answered_by(model) and len(traffic.answers) > count + 16)
    finally:
        if traffic is not None:
            traffic.stop()
        service.delete()
    assert traffic.errors == []
    assert {answer.status_code for answer in traffic.answers} == {200}


def test_an_update_that_fails_leaves_the_old_version_serving(project: Path) -> None:
    home = project / "home"
    deploy(project, "svc", "m:1")
    uri = show(project, "svc")["details"]["scoring_uri"]
    try:
        done = mlscore(home, "service", "update", "svc", "-m", "m:3", check=False)
        assert done.returncode == 1
        assert "the update failed and generation 1 still serves" in done.stderr
        assert "this model version is broken" in done.stderr  # the new server's log tail
        assert httpx.post(uri, json={"data": 1}).json()["model"] == "one"
        record = show(project, "svc")
        assert record["state"] == "Healthy" and record["models"] == ["m:1"]
    finally:
        mlscore(home, "service", "delete", "svc")


def test_a_deploy_whose_init_fails_ends_failed_with_the_log_tail(project: Path) -> None:
    home = project / "home"
    done = deploy(project, "svc", "m:3", check=False)
    assert done.returncode == 1
    assert "Failed" in done.stdout and "this model version is broken" in done.stderr
    assert show(project, "svc")["state"] == "Failed"
    assert "this model version is broken" in mlscore(home, "service", "logs", "svc").stdout
    again = deploy(project, "svc", "m:1", check=False)
    assert again.returncode == 1 and "exists already" in again.stderr
    done = mlscore(home, "service", "update", "svc", "-m", "m:1")  # a failed service can be fixed in place
    assert "Healthy" in done.stdout
    mlscore(home, "service", "delete", "svc")


def test_a_busy_port_fails_the_deploy_saying_so(project: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        (project / "dc.json").write_text(json.dumps({"computeType": "local", "port": port}))
        done = deploy(project, "svc", "m:1", check=False)
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr
    mlscore(project / "home", "service", "delete", "svc")


def test_service_errors_name_what_was_wrong(project: Path) -> None:
    home = project / "home"
    assert "no model named 'nope'" in deploy(project, "svc", "nope:1", check=False).stderr
    assert "no service named 'ghost'" in mlscore(home, "service", "show", "ghost", check=False).stderr
    assert "nothing to update" in mlscore(home, "service", "update", "ghost", check=False).stderr
    (project / "dc.json").write_text(json.dumps({"computeType": "local", "port": "80a"}))
    bad = deploy(project, "svc", "m:1", check=False)
    assert bad.returncode == 1 and "port" in bad.stderr
    (project / "dc.json").write_text(json.dumps({"computeType": "local"}))
    deploy(project, "svc", "m:1")
    try:
        assert "has auth off" in mlscore(home, "service", "keys", "svc", check=False).stderr
    finally:
        mlscore(home, "service", "delete", "svc")


def test_data_collection_writes_to_the_service_folder_and_outlives_the_service(project: Path) -> None:
    home = project / "home"
    (project / "dc.json").write_text(json.dumps({"computeType": "local", "dataCollection": {"storageEnabled": True}}))
    done = deploy(project, "collecting", "m:1")
    assert "note: dataCollection.storageEnabled: model data is written as JSON lines to model-data/" in done.stdout
    uri = show(project, "collecting")["details"]["scoring_uri"]
    answer = httpx.post(uri, json={"data": 1}, headers={"x-request-id": "local-1"})
    assert answer.status_code == 200
    done = mlscore(home, "service", "delete", "collecting")  # the server stops: what it buffered is written
    data = home / "services" / "collecting" / "model-data"
    assert f"stays in {data}" in done.stdout
    (record,) = [json.loads(line) for path in data.rglob("*.jsonl") for line in path.read_text().splitlines()]
    assert (record["request_id"], record["input"], record["output"]) == ("local-1", {"data": 1}, answer.json())
    assert record["service"] == "collecting"
    assert sorted(path.name for path in (home / "services" / "collecting").iterdir()) == ["model-data"]
