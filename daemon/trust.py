"""Who may speak: this site's signing key, the topology's public keys, and which signer may send which kind.

Every mailbox message is sealed by the site that sends it and addressed to the site that receives it;
on arrival the envelope must verify against the signer's public key and the signer must be allowed
that kind (offers, acks and custody hops from peers, control only from an operator key, custody
receipts only from the archive, presence only from the site it describes). Pulls carry a signature of
the puller too, so a data server serves a transfer only to the receiver its offer named.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Collection

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from daemon.config import Topology
from daemon.errors import DaemonError
from protocol.custody import Receipt
from protocol.errors import ProtocolError
from protocol.signing import (
    Sealed,
    SignatureError,
    load_private_key,
    public_key_from_text,
    seal,
    seal_receipt,
    unseal,
    verify_receipt,
)

PULL_DOMAIN = b"skyrelay/v1/pull\x00"
PULL_HEADER = "X-Skyrelay-Pull"
PULL_CLOCK_SKEW_S = 300.0


class SigningKeyError(DaemonError):
    """This site's signing key cannot be loaded, or does not match its public key in the topology."""


class Trust:
    """Seals what this site sends and opens what it receives."""

    def __init__(self, topology: Topology, site: str, key: Ed25519PrivateKey) -> None:
        self.site = site
        self.archive = next((s.name for s in topology.sites.values() if s.role == "archive"), "")
        self.peers = frozenset(topology.peers(site))
        self.operators = frozenset(topology.operators)
        self.keys: dict[str, Ed25519PublicKey] = {
            name: public_key_from_text(cfg.public_key) for name, cfg in topology.sites.items()
        }
        for name, text in topology.operators.items():
            if name in self.keys:
                raise SigningKeyError(f"operator {name!r} has the name of a site")
            self.keys[name] = public_key_from_text(text)
        self._key = key
        if key.public_key().public_bytes_raw() != self.keys[site].public_bytes_raw():
            raise SigningKeyError(f"the signing key of {site} does not match sites.{site}.public_key in the topology")

    @classmethod
    def load(cls, topology: Topology, site: str) -> Trust:
        """The site's trust, its private key read from ``signing_key_file`` (blocking).

        Raises:
            SigningKeyError: the key file is missing, unreadable, too open, or not the topology's key.
        """
        path = topology.sites[site].key_file
        try:
            key = load_private_key(path)
        except (OSError, ProtocolError) as exc:
            raise SigningKeyError(f"cannot load the signing key of {site} from {path}: {exc}") from exc
        return cls(topology, site, key)

    def allowed(self, kind: str) -> Collection[str]:
        """Who may send ``kind`` into this site's mailbox."""
        if kind == "control":
            return self.operators
        return self.peers

    def seal(self, kind: str, to: str, body: bytes) -> bytes:
        """Sign a message of ``kind`` for site ``to`` (``""`` for a statement to anyone, e.g. presence)."""
        return seal(body, kind=kind, signer=self.site, key=self._key, to=to)

    def open(self, kind: str, data: bytes) -> Sealed:
        """Verify a message that arrived in this site's mailbox as ``kind``.

        Raises:
            SignatureError: unsigned, from an unknown or unauthorised signer, or it does not verify.
        """
        return unseal(data, kind=kind, keys=self.keys, allowed_signers=self.allowed(kind), to=self.site)

    def open_presence(self, peer: str, data: bytes) -> Sealed:
        """Verify a peer's presence (signed by that peer, addressed to anyone)."""
        return unseal(data, kind="presence", keys=self.keys, allowed_signers=(peer,))

    def sign_receipt(self, receipt: Receipt) -> str:
        """The archive's signed custody receipt (only the archive has the key that verifies)."""
        return seal_receipt(receipt.to_json(), archive=self.site, key=self._key).decode()

    def open_receipt(self, envelope: str) -> Receipt:
        """Verify the archive's signature on a custody receipt and decode it.

        Raises:
            SignatureError: not signed by the archive, or altered.
            ProtocolError: the receipt's content is not a valid receipt.
        """
        sealed = verify_receipt(envelope.encode(), keys=self.keys, archive=self.archive)
        receipt = Receipt.from_json(sealed.body)
        if receipt.archive != self.archive:
            raise SignatureError("signer_not_allowed", f"receipt names {receipt.archive!r}, not {self.archive!r}")
        return receipt

    # ---- pulls ---------------------------------------------------------------------------------

    def pull_header(self, path: str, now: float | None = None) -> str:
        """``site:unix_seconds:signature`` over the path: proves which site asks for a transfer."""
        stamp = f"{(time.time() if now is None else now):.0f}"
        sig = self._key.sign(_pull_bytes(path, self.site, stamp))
        return f"{self.site}:{stamp}:{base64.urlsafe_b64encode(sig).decode().rstrip('=')}"

    def pull_signer(self, header: str, path: str, now: float | None = None) -> str | None:
        """The site that signed a pull header for ``path``, or None when it does not verify or is stale."""
        site, _, rest = header.partition(":")
        stamp, _, sig_text = rest.partition(":")
        key = self.keys.get(site)
        if key is None or site in self.operators or not stamp.isdigit():
            return None
        if abs((time.time() if now is None else now) - int(stamp)) > PULL_CLOCK_SKEW_S:
            return None
        try:
            sig = base64.urlsafe_b64decode(sig_text + "=" * (-len(sig_text) % 4))
            key.verify(sig, _pull_bytes(path, site, stamp))
        except (InvalidSignature, binascii.Error, ValueError):
            return None
        return site


def _pull_bytes(path: str, site: str, stamp: str) -> bytes:
    return b"".join((PULL_DOMAIN, path.encode(), b"\x00", site.encode(), b"\x00", stamp.encode()))
