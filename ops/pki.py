"""A throwaway certificate authority and a server certificate for 127.0.0.1, made with openssl.

Used by the tests and by ``skyrelay bench`` (its HTTPS row) to run a one-machine cluster with TLS;
a deployed system uses the observatory's own CA (see systemd/README.md).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


class PkiError(RuntimeError):
    """openssl is missing or refused to make the certificates."""


def _openssl(*args: str, cwd: Path) -> None:
    try:
        subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        raise PkiError(f"openssl {args[0]} failed: {exc.stderr.decode(errors='replace').strip()}") from exc


def make_pki(directory: Path, name: str, *, days: int = 2) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for ``IP:127.0.0.1`` signed by it, in ``directory``: (ca, cert, key).

    Raises:
        PkiError: openssl is not installed or failed.
    """
    if shutil.which("openssl") is None:
        raise PkiError("openssl not found: install it (apt-get install -y openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    rsa = ("-newkey", "rsa:2048", "-nodes")
    _openssl("req", "-x509", *rsa, "-days", str(days), "-subj", f"/CN={name} CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=directory)  # fmt: skip
    _openssl("req", *rsa, "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr",
             cwd=directory)  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", str(days), "-extfile", "san.ext", "-out", "server.crt", cwd=directory)  # fmt: skip
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"
