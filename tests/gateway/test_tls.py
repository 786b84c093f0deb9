"""TLS and mTLS on the gateway's port, with certificates generated for the test by the openssl
CLI: a TLS client is served, a plaintext one or one trusting another CA is not; with a client
CA configured, a client without a certificate (or with one of another CA) is refused."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from gateway.client import AisleClient, tls_credentials
from tests.gateway.conftest import eventually, rpc_error, side_gateway

# These tests serve the real data of ../shared/data (skipped without it).
pytestmark = pytest.mark.data

# Certificates live for a day: long enough for any test session, short if one ever leaks.
DAYS = "1"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    # A CA the gateway does not know, and a client certificate it signed.
    other_ca: Path
    stranger_cert: Path
    stranger_key: Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", DAYS, "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )
    return cert, key


def make_leaf(folder: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    key, csr, cert, ext = (folder / f"{name}.{suffix}" for suffix in ("key", "csr", "pem", "ext"))
    ext.write_text(extensions)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}", cwd=folder)
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
            "-out", str(cert), "-days", DAYS, "-extfile", str(ext), cwd=folder)
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to generate test certificates")
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca(folder, "aisle-test-ca")
    other = make_ca(folder, "other-ca")
    server = make_leaf(folder, "gateway", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    client = make_leaf(folder, "client", ca, "extendedKeyUsage=clientAuth\n")
    stranger = make_leaf(folder, "stranger", other, "extendedKeyUsage=clientAuth\n")
    return Pki(ca[0], *server, *client, other[0], *stranger)


def searched(client: AisleClient) -> bool:
    return bool(client.search("cordless drill", page_size=2).items)


def refused(client: AisleClient) -> grpc.StatusCode:
    return rpc_error(client.search, "cordless drill", page_size=2, timeout_s=10).code()


def test_a_tls_gateway_serves_tls_clients_only(gateway_loop, gateway, catalog, triton_url, pki):
    # Given a gateway with a certificate and key
    gw = side_gateway(gateway_loop, gateway, catalog, triton_url, wait=False,
                      tls_cert=pki.server_cert, tls_key=pki.server_key)
    try:
        # a client trusting its CA is served (health and the API)
        with AisleClient(gw.address, credentials=tls_credentials(pki.ca), timeout_s=30) as client:
            def serving():
                assert client.health() == "SERVING"

            eventually(serving, timeout=10)
            assert searched(client)
        # a plaintext client gets no answer
        with AisleClient(gw.address) as plaintext:
            assert refused(plaintext) == grpc.StatusCode.UNAVAILABLE
        # nor does a client that does not trust the certificate's CA
        with AisleClient(gw.address, credentials=tls_credentials(pki.other_ca)) as distrustful:
            assert refused(distrustful) == grpc.StatusCode.UNAVAILABLE
    finally:
        gw.stop()


def test_an_mtls_gateway_requires_a_client_certificate_of_its_ca(gateway_loop, gateway, catalog, triton_url, pki):
    # Given a gateway that also names the CA of its clients
    gw = side_gateway(gateway_loop, gateway, catalog, triton_url, wait=False,
                      tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)
    try:
        # a client with a certificate that CA signed is served
        creds = tls_credentials(pki.ca, cert=pki.client_cert, key=pki.client_key)
        with AisleClient(gw.address, credentials=creds, timeout_s=30) as client:
            assert searched(client)
        # a TLS client without a certificate is refused
        with AisleClient(gw.address, credentials=tls_credentials(pki.ca)) as anonymous:
            assert refused(anonymous) == grpc.StatusCode.UNAVAILABLE
        # so is one whose certificate another CA signed
        creds = tls_credentials(pki.ca, cert=pki.stranger_cert, key=pki.stranger_key)
        with AisleClient(gw.address, credentials=creds) as stranger:
            assert refused(stranger) == grpc.StatusCode.UNAVAILABLE
        # and a plaintext one
        with AisleClient(gw.address) as plaintext:
            assert refused(plaintext) == grpc.StatusCode.UNAVAILABLE
    finally:
        gw.stop()


def test_a_client_certificate_needs_its_key():
    with pytest.raises(ValueError):
        tls_credentials("ca.pem", cert="client.pem")
