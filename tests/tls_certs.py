"""Throwaway PKI for TLS tests, made with the ``openssl`` CLI.

:func:`make_pki` writes into a folder: a CA with a server certificate (CN and SAN ``localhost``,
SAN IP ``127.0.0.1``) and a client certificate, and a second, unrelated "rogue" CA with its own
server and client certificates. Keys are EC P-256 (fast to make), unencrypted PEM; every
certificate is valid for one day.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "1"

_CA_EXT = """\
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""

_LEAF_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyAgreement
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
extendedKeyUsage = {usage}
subjectAltName = {san}
"""


@dataclass(frozen=True)
class CertKey:
    """A PEM certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    """A CA (``ca.cert`` is the trust anchor to hand out) and the two leaves it signed."""

    ca: CertKey
    server: CertKey
    client: CertKey


@dataclass(frozen=True)
class Pki:
    good: Authority
    rogue: Authority


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {r.stderr.strip()}")


def _new_key(path: Path) -> None:
    _openssl(
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        str(path),
        cwd=path.parent,
    )


def _make_ca(folder: Path, name: str, cn: str) -> CertKey:
    key, cert, ext = folder / f"{name}.key", folder / f"{name}.pem", folder / f"{name}.ext"
    _new_key(key)
    ext.write_text("[v3_ca]\n" + _CA_EXT)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        str(key),
        "-sha256",
        "-days",
        DAYS,
        "-subj",
        f"/O=AIRCON test/CN={cn}",
        "-config",
        str(ext),
        "-extensions",
        "v3_ca",
        "-out",
        str(cert),
        cwd=folder,
    )
    return CertKey(cert, key)


def _make_leaf(folder: Path, name: str, cn: str, ca: CertKey, *, usage: str, san: str) -> CertKey:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem"
    ext = folder / f"{name}.ext"
    _new_key(key)
    _openssl(
        "req", "-new", "-key", str(key), "-subj", f"/O=AIRCON test/CN={cn}", "-out", str(csr),
        cwd=folder,
    )  # fmt: skip
    ext.write_text("[v3_leaf]\n" + _LEAF_EXT.format(usage=usage, san=san))
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca.cert),
        "-CAkey",
        str(ca.key),
        "-set_serial",
        f"0x{secrets.token_hex(8)}",
        "-sha256",
        "-days",
        DAYS,
        "-extfile",
        str(ext),
        "-extensions",
        "v3_leaf",
        "-out",
        str(cert),
        cwd=folder,
    )
    return CertKey(cert, key)


def make_authority(folder: Path, prefix: str) -> Authority:
    """A CA ``<prefix>-ca`` with ``<prefix>-server`` and ``<prefix>-client`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(folder, f"{prefix}-ca", f"{prefix} test CA")
    server = _make_leaf(
        folder,
        f"{prefix}-server",
        "localhost",
        ca,
        usage="serverAuth",
        san="DNS:localhost, IP:127.0.0.1",
    )
    client = _make_leaf(
        folder,
        f"{prefix}-client",
        f"{prefix} test client",
        ca,
        usage="clientAuth",
        san=f"DNS:{prefix}-client.test",
    )
    return Authority(ca, server, client)


def make_pki(folder: Path) -> Pki:
    """Our CA (``good``) and an unrelated one (``rogue``), each with a server and a client."""
    return Pki(good=make_authority(folder, "good"), rogue=make_authority(folder, "rogue"))
