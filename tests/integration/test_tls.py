"""DICOM TLS with real dcmtk peers: the gateway's TLS listener (client certificates, per-peer
``require_tls``) and our SCU towards a TLS-only destination (dcmtk ``storescp +tls``).

Certificates come from a throwaway PKI (:mod:`tests.tls_certs`): our CA with a server and a
client certificate, and an unrelated "rogue" CA with its own.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread

from gateway.demo.launcher import free_port, free_ports, write_config
from gateway.demo.phantom import SeriesInfo, make_phantom, write_dicom_series
from tests.conftest import GatewayProcess, dcmtk_env, wait_for
from tests.tls_certs import Authority, CertKey, Pki, make_pki, openssl_available

pytestmark = pytest.mark.integration

TIMEOUT = 120  # per dcmtk call; the test machine is small and shared


def _dcmtk_has_tls() -> bool:
    if not all(shutil.which(t) for t in ("storescu", "echoscu", "storescp")):
        return False
    r = subprocess.run(["storescu", "--version"], capture_output=True, text=True, timeout=30)
    return "OpenSSL" in r.stdout + r.stderr


if not openssl_available():
    pytest.skip("the openssl CLI is not installed", allow_module_level=True)
if not _dcmtk_has_tls():
    pytest.skip("dcmtk is not installed or was built without OpenSSL", allow_module_level=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> SeriesInfo:
    """A small phantom MR series (4 slices)."""
    folder = tmp_path_factory.mktemp("study")
    return write_dicom_series(make_phantom(21, shape=(4, 48, 48)), folder, seed=21)


def _series_dir(series: SeriesInfo) -> Path:
    return series.files[0].parent


# ---------------------------------------------------------------------------------------------
# dcmtk as a TLS client


def _tls_args(client: CertKey | None, trust: Path) -> list[str]:
    """dcmtk TLS options: present ``client`` (or no certificate: ``+tla``), trust ``trust``.

    dcmtk verifies the server's certificate by default (``--require-peer-cert``)."""
    who = ["+tls", str(client.key), str(client.cert)] if client else ["+tla"]
    return [*who, "+cf", str(trust)]


def _dcmtk(args: list[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    env, stdin = dcmtk_env(), subprocess.DEVNULL
    return subprocess.run(
        args, capture_output=True, text=True, env=env, timeout=timeout, stdin=stdin
    )


def echoscu(
    port: int, tls: list[str] | None = None, calling_ae: str = "STORESCU"
) -> subprocess.CompletedProcess[str]:
    args = ["echoscu", *(tls or []), "-aet", calling_ae, "-aec", "AIRCON", "127.0.0.1", str(port)]
    return _dcmtk(args)


def storescu(
    port: int, path: Path, tls: list[str] | None = None, calling_ae: str = "STORESCU"
) -> subprocess.CompletedProcess[str]:
    what = ["+sd", "+r", str(path)] if path.is_dir() else [str(path)]
    args = ["storescu", *(tls or []), "-aet", calling_ae, "-aec", "AIRCON", "127.0.0.1", str(port)]
    return _dcmtk(args + what)


def _out(r: subprocess.CompletedProcess[str]) -> str:
    return f"rc={r.returncode}\n{r.stdout}{r.stderr}"


# ---------------------------------------------------------------------------------------------
# The gateway with a TLS listener


class TlsGateway(GatewayProcess):
    def __init__(self, config_path: Path, tls_port: int):
        super().__init__(config_path)
        self.tls_port = tls_port


def _spooled(gw: GatewayProcess) -> set[str]:
    """SOP Instance UIDs in the gateway's spool."""
    return {p.stem for p in (gw.work / "spool").rglob("*.dcm")}


@pytest.fixture
def tls_gateway(tmp_path: Path, pki: Pki) -> Iterator[Any]:
    """``factory(peers=None, require_client_certificate=True)``: a started gateway with a TLS
    listener (our server certificate; clients verified against our CA), no rules (instances
    are only spooled)."""
    started: list[TlsGateway] = []

    def factory(
        peers: list[dict[str, Any]] | None = None, require_client_certificate: bool = True
    ) -> TlsGateway:
        work = tmp_path / f"gw{len(started)}"
        work.mkdir()
        port, tls_port, destination = free_ports(3)
        overrides: dict[str, Any] = {
            "listen": {
                "tls": {
                    "port": tls_port,
                    "certificate": str(pki.good.server.cert),
                    "private_key": str(pki.good.server.key),
                    "ca_certificates": str(pki.good.ca.cert),
                    "require_client_certificate": require_client_certificate,
                }
            },
            "rules": [],
            "storage": {"min_free_mb": 100},
        }
        if peers is not None:
            overrides["peers"] = peers
        cfg = write_config(work, port, destination_port=destination, overrides=overrides)
        gw = TlsGateway(cfg, tls_port)
        started.append(gw)
        gw.start(timeout=180)  # answers C-ECHO on the plain port from STORESCU
        good = _tls_args(pki.good.client, pki.good.ca.cert)
        wait_for(
            lambda: echoscu(tls_port, good).returncode == 0,
            60,
            interval=0.5,
            what="the TLS listener to answer C-ECHO",
        )
        return gw

    yield factory
    for gw in started:
        gw.stop()


def test_storescu_over_tls_with_a_client_certificate(tls_gateway, pki: Pki, series) -> None:
    gw = tls_gateway()
    good = _tls_args(pki.good.client, pki.good.ca.cert)
    r = echoscu(gw.tls_port, good)
    assert r.returncode == 0, _out(r)
    r = storescu(gw.tls_port, _series_dir(series), good)
    assert r.returncode == 0, _out(r)
    assert _spooled(gw) == set(series.sop_instance_uids), gw.log()[-3000:]
    # The received instances are the ones sent.
    for path in (gw.work / "spool").rglob("*.dcm"):
        assert str(dcmread(path).SeriesInstanceUID) == series.series_uid


def test_wrong_certificates_are_refused_and_the_gateway_keeps_serving(
    tls_gateway, pki: Pki, series
) -> None:
    gw = tls_gateway()
    study = _series_dir(series)
    attempts = {
        "client certificate from another CA": _tls_args(pki.rogue.client, pki.good.ca.cert),
        "no client certificate": _tls_args(None, pki.good.ca.cert),
        "client trusts only another CA": _tls_args(pki.good.client, pki.rogue.ca.cert),
        "plain TCP to the TLS port": [],
    }
    for what, tls in attempts.items():
        r = storescu(gw.tls_port, study, tls)
        assert r.returncode != 0, f"{what}: storescu succeeded\n{_out(r)}"
        assert _spooled(gw) == set(), f"{what}: something was stored"
    # A TLS client on the plain port does not get through either.
    r = echoscu(gw.port, _tls_args(pki.good.client, pki.good.ca.cert))
    assert r.returncode != 0, _out(r)

    assert gw.proc is not None and gw.proc.poll() is None, gw.log()[-3000:]
    r = echoscu(gw.tls_port, _tls_args(pki.good.client, pki.good.ca.cert))
    assert r.returncode == 0, _out(r)
    r = echoscu(gw.port)
    assert r.returncode == 0, _out(r)


def test_an_idle_connection_does_not_block_the_tls_listener(tls_gateway, pki: Pki) -> None:
    """A client that connects to the TLS port and never starts the handshake (a port scanner, a
    stuck peer) must not hold up the other clients' handshakes."""
    gw = tls_gateway()
    good = _tls_args(pki.good.client, pki.good.ca.cert)
    with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=10):
        time.sleep(0.5)  # accepted by now
        try:
            r = _dcmtk(["echoscu", "-to", "20", *good, "-aet", "STORESCU", "-aec", "AIRCON",
                        "127.0.0.1", str(gw.tls_port)], timeout=30)  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.fail("a TLS C-ECHO hung while another connection sat idle on the TLS port")
        assert r.returncode == 0, _out(r)


def test_client_certificate_optional_when_not_required(tls_gateway, pki: Pki) -> None:
    """Without require_client_certificate a client without a certificate gets in over TLS."""
    gw = tls_gateway(require_client_certificate=False)
    r = echoscu(gw.tls_port, _tls_args(None, pki.good.ca.cert))
    assert r.returncode == 0, _out(r)


def test_peer_requiring_tls_is_rejected_on_the_plain_port(tls_gateway, pki: Pki, series) -> None:
    gw = tls_gateway(peers=[{"ae_title": "STORESCU"}, {"ae_title": "SECURE", "require_tls": True}])
    good = _tls_args(pki.good.client, pki.good.ca.cert)
    r = echoscu(gw.port, calling_ae="SECURE")
    assert r.returncode != 0, _out(r)
    assert "Association Rejected" in r.stdout + r.stderr, _out(r)  # A-ASSOCIATE-RJ, not a reset
    r = storescu(gw.port, _series_dir(series), calling_ae="SECURE")
    assert r.returncode != 0, _out(r)
    assert _spooled(gw) == set()

    r = echoscu(gw.tls_port, good, calling_ae="SECURE")
    assert r.returncode == 0, _out(r)
    r = storescu(gw.tls_port, _series_dir(series), good, calling_ae="SECURE")
    assert r.returncode == 0, _out(r)
    assert _spooled(gw) == set(series.sop_instance_uids)
    # A peer without require_tls still gets in on either port.
    assert echoscu(gw.port).returncode == 0
    assert echoscu(gw.tls_port, good).returncode == 0


# ---------------------------------------------------------------------------------------------
# Our SCU towards a TLS destination: dcmtk storescp +tls, requiring our client certificate


class TlsStoreSCP:
    """dcmtk ``storescp`` over TLS with ``server``'s certificate, requiring a client certificate
    that ``trust`` verifies; received files land in ``folder``."""

    def __init__(self, folder: Path, server: CertKey, trust: Path, ae_title: str = "PLANNING"):
        self.folder = folder
        self.ae_title = ae_title
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder.parent / f"storescp-{self.port}.log"
        args = [
            "storescp", "+tls", str(server.key), str(server.cert), "+cf", str(trust),
            "--require-peer-cert", "-aet", ae_title, "-od", str(folder), str(self.port),
        ]  # fmt: skip
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dcmtk_env(),
                stdin=subprocess.DEVNULL,
            )
        wait_for(self._listening, 30, what="storescp to listen")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"storescp exited: {self.log.read_text(errors='replace')}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def tls_storescp(tmp_path: Path, pki: Pki) -> Iterator[TlsStoreSCP]:
    node = TlsStoreSCP(tmp_path / "planning", pki.good.server, pki.good.ca.cert)
    yield node
    node.stop()


def _cli_config(work: Path, node: TlsStoreSCP, tls: dict[str, str] | None) -> Path:
    """A gateway config whose destination 'planning' is ``node`` (over TLS when ``tls``)."""
    work.mkdir(parents=True, exist_ok=True)
    planning: dict[str, Any] = {"ae_title": node.ae_title, "host": "127.0.0.1", "port": node.port}
    if tls is not None:
        planning["tls"] = tls
    path = write_config(
        work,
        free_port(),
        overrides={
            "destinations": {"planning": planning},
            "rules": [],
            "storage": {"min_free_mb": 100},
        },
    )
    assert yaml.safe_load(path.read_text())["destinations"]["planning"] == planning
    return path


def _aircon(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=config.parent,
    )


def _client(authority: Authority, trust: Path) -> dict[str, str]:
    return {
        "ca_certificates": str(trust),
        "certificate": str(authority.client.cert),
        "private_key": str(authority.client.key),
    }


def test_echo_and_send_to_a_tls_destination(tls_storescp, pki: Pki, series, tmp_path) -> None:
    cfg = _cli_config(tmp_path / "good", tls_storescp, _client(pki.good, pki.good.ca.cert))
    r = _aircon(cfg, "echo", "planning")
    assert r.returncode == 0, _out(r)
    assert "success" in r.stdout, _out(r)
    sent = series.files[0]
    r = _aircon(cfg, "send", str(sent), "planning", "-q")
    assert r.returncode == 0, _out(r)
    files = wait_for(tls_storescp.files, 30, what="storescp to write the file")
    assert len(files) == 1
    assert str(dcmread(files[0]).SOPInstanceUID) == series.sop_instance_uids[0]


def test_tls_destination_not_trusted_or_without_our_certificate(
    tls_storescp, pki: Pki, series, tmp_path
) -> None:
    # Each case with the TLS error storescp logs for it (OpenSSL's reason strings).
    cases: dict[str, tuple[dict[str, str] | None, str]] = {
        # The destination's certificate is not from the CA we trust: we abort the handshake.
        "trusts the rogue CA": (_client(pki.good, pki.rogue.ca.cert), "unknown ca"),
        # The destination does not accept our certificate.
        "rogue client certificate": (
            _client(pki.rogue, pki.good.ca.cert),
            "certificate verify failed",
        ),
        # No client certificate; the destination requires one.
        "no client certificate": (
            {"ca_certificates": str(pki.good.ca.cert)},
            "peer did not return a certificate",
        ),
        # Plain TCP to a TLS-only destination.
        "no TLS": (None, "wrong version number"),
    }
    for i, (what, (tls, reason)) in enumerate(cases.items()):
        cfg = _cli_config(tmp_path / f"c{i}", tls_storescp, tls)
        r = _aircon(cfg, "echo", "planning", "--timeout", "15")
        assert r.returncode == 1 and "FAILED" in r.stdout, f"{what}: echo\n{_out(r)}"
        wait_for(
            lambda reason=reason: reason in tls_storescp.log.read_text(errors="replace"),
            15,
            what=f"storescp to log {reason!r} ({what})",
        )
        r = _aircon(cfg, "send", str(series.files[0]), "planning", "-q", "--timeout", "15")
        assert r.returncode != 0, f"{what}: send succeeded\n{_out(r)}"
        assert "aircon: error:" in r.stderr, f"{what}: send\n{_out(r)}"
    assert tls_storescp.files() == []
    assert tls_storescp.proc.poll() is None
