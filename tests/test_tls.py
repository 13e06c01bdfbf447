"""HTTPS: a self-signed certificate made here, a real round trip through uvicorn's TLS, and the
start refused with one clear line for a pair that cannot serve."""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import SCRIPTS, Server, dies_with_tests, run_server_to_exit, serve_command
from mlscore.server.settings import Settings, SettingsError

SERVING_HTTPS = re.compile(r"serving .* on https://([\d.]+):(\d+)")
PASSWORD = "correct horse"


def make_certificate(folder: Path, name: str = "server", password: str | None = None) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1 and its key (encrypted with `password`),
    with the `cryptography` package where installed, else the openssl command."""
    cert, key = folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    try:
        _with_cryptography(cert, key, password)
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("needs the cryptography package or the openssl command to make a certificate")
        _with_openssl(openssl, cert, key, password)
    return cert, key


def _with_cryptography(cert: Path, key: Path, password: str | None) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    encryption = (serialization.BestAvailableEncryption(password.encode()) if password
                  else serialization.NoEncryption())
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))


def _with_openssl(openssl: str, cert: Path, key: Path, password: str | None) -> None:
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    if password:
        plain = key.with_suffix(".plain")
        key.rename(plain)
        subprocess.run([openssl, "pkey", "-in", str(plain), "-aes256", "-passout", f"pass:{password}",
                        "-out", str(key)], check=True, capture_output=True)
        plain.unlink()


def start_https_server(tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Server:
    log_path = tmp_path / f"server-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(serve_command(*args), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                                   env={**os.environ, **(env or {})}, start_new_session=True,
                                   preexec_fn=dies_with_tests())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = SERVING_HTTPS.search(log_path.read_text(errors="replace"))
        if match:
            return Server(process, f"https://{match.group(1)}:{match.group(2)}", log_path)
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"server did not start within {timeout}s:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


def test_https_round_trip_with_a_self_signed_certificate(tmp_path, certificate):
    cert, key = certificate
    server = start_https_server(tmp_path, "--entry-script", str(SCRIPTS / "plain_echo.py"),
                                env={"MLSCORE_SSL_CERT": str(cert), "MLSCORE_SSL_KEY": str(key)})
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=server.url, verify=trusted, timeout=10) as client:
            assert client.get("/").text == "Healthy"
            scored = client.post("/score", content=b"over tls")
            assert scored.status_code == 200 and scored.json()["received"] == "over tls"
        with pytest.raises(httpx.ConnectError):  # the certificate is not one the system trusts
            httpx.get(server.url + "/", timeout=10)
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
            httpx.get(server.url.replace("https://", "http://") + "/", timeout=5)
        assert server.wait_log("listening on https://")
    finally:
        assert server.stop() == 0


def test_mismatched_certificate_and_key_stop_the_start(tmp_path, certificate):
    cert, _ = certificate
    _, other_key = make_certificate(tmp_path, "other")
    result = run_server_to_exit(tmp_path, "--entry-script", str(SCRIPTS / "plain_echo.py"),
                                "--ssl-cert", str(cert), "--ssl-key", str(other_key))
    assert result.returncode == 2
    assert (f"--ssl-cert and --ssl-key: the key does not belong to the certificate: {other_key} is not the key of "
            f"{cert}") in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("problem", ["missing", "not a certificate", "unreadable"])
def test_unusable_certificate_file_is_a_settings_error(tmp_path, certificate, problem):
    cert, key = certificate
    broken = tmp_path / "broken.pem"
    if problem == "not a certificate":
        broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    elif problem == "unreadable":
        broken.write_bytes(cert.read_bytes())
        broken.chmod(0)
        if _can_read(broken):
            pytest.skip("running as a user that reads any file")
    with pytest.raises(SettingsError) as raised:
        Settings.build({"entry_script": "x.py", "ssl_cert": str(broken), "ssl_key": str(key)}, environ={})
    message = str(raised.value)
    assert message.startswith("--ssl-cert and --ssl-key: ")
    expected = {"missing": "file not found", "not a certificate": "not a usable PEM certificate",
                "unreadable": "cannot be read"}[problem]
    assert expected in message


def _can_read(path: Path) -> bool:
    try:
        path.read_bytes()
    except PermissionError:
        return False
    return True


def test_key_without_certificate_is_a_settings_error(certificate):
    _, key = certificate
    with pytest.raises(SettingsError, match="MLSCORE_SSL_KEY: needs a certificate too"):
        Settings.build({"entry_script": "x.py"}, environ={"MLSCORE_SSL_KEY": str(key)})


def test_encrypted_key_needs_its_password_and_never_prompts(tmp_path):
    cert, key = make_certificate(tmp_path, "encrypted", password=PASSWORD)
    cli = {"entry_script": "x.py", "ssl_cert": str(cert), "ssl_key": str(key)}
    with pytest.raises(SettingsError, match="MLSCORE_SSL_KEY_PASSWORD"):
        Settings.build(cli, environ={})
    with pytest.raises(SettingsError):
        Settings.build(cli, environ={"MLSCORE_SSL_KEY_PASSWORD": "wrong"})
    settings = Settings.build(cli, environ={"MLSCORE_SSL_KEY_PASSWORD": PASSWORD})
    assert settings.ssl_key_password == PASSWORD
    assert PASSWORD not in str(settings.redacted())
    assert settings.redacted()["ssl_key_password"] == "set"
