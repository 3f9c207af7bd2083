"""Credentials: MQTT client ids only an account's holder can compute, and mosquitto password hashes for HTTP logins.

mosquitto lets any account connect with any client id, and a second connection with an id drops the
first: a daemon's ids therefore carry an HMAC of its own password, which no other account can guess.
The same ``$7$`` (PBKDF2-SHA512) password file the site's broker uses authenticates operators and
subscribers on the site's HTTP endpoints.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

PBKDF2_ITERATIONS = 101
"""mosquitto_passwd's own iteration count (the broker checks every connection with it)."""
_SALT_BYTES = 12


def secret_client_id(username: str, password: str, purpose: str) -> str:
    """``<username>-<purpose>-<24 hex digits>``: a client id only the holder of ``password`` can compute."""
    mac = hmac.new(password.encode(), b"skyrelay/v1 client-id\x00" + purpose.encode(), hashlib.sha256)
    return f"{username}-{purpose}-{mac.hexdigest()[:24]}"


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None) -> str:
    """mosquitto 2.0's password hash: ``$7$<iterations>$<salt base64>$<PBKDF2-HMAC-SHA512 base64>``."""
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash (ours or ``mosquitto_passwd``'s)."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt, digest = base64.b64decode(parts[3], validate=True), base64.b64decode(parts[4], validate=True)
    except binascii.Error:
        return False
    return hmac.compare_digest(hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2])), digest)


def read_password_file(path: Path) -> dict[str, str]:
    """username → hash from a mosquitto password file (blocking)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        user, sep, hashed = line.strip().partition(":")
        if sep and user and not user.startswith("#"):
            out[user] = hashed
    return out


class Logins:
    """Checks HTTP Basic logins against a password file, remembering what it verified (PBKDF2 is not free)."""

    def __init__(self, hashes: Mapping[str, str]) -> None:
        self._hashes = dict(hashes)
        self._verified: dict[str, str] = {}

    def check(self, username: str, password: str, allowed: Iterable[str]) -> bool:
        """Whether the login is right and the account is one of ``allowed``."""
        if username not in set(allowed):
            return False
        hashed = self._hashes.get(username)
        if hashed is None:
            return False
        if self._verified.get(username) == password:
            return True
        if verify_password(password, hashed):
            self._verified[username] = password
            return True
        return False
