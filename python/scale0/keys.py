"""CURVE key files as `scale0 keygen` writes them.

`NAME.key` holds `public-key = "<Z85>"`, `NAME.key_secret` holds the public and the secret
key (czmq's certificate layout); a file whose only line is a 40-character Z85 key is read
as a public key, and so is the Z85 text itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

import zmq
from zmq.utils import z85

#: A path to a key file, or (for public keys) the 40-character Z85 text.
KeySpec = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Curve:
    """The connecting side of CURVE: the server's public key and our own key pair, each
    32 bytes in Z85 (40 characters), as pyzmq's socket options take them."""

    #: The server's public key (Z85).
    server_key: bytes
    #: This peer's public key (Z85).
    public_key: bytes
    #: This peer's secret key (Z85).
    secret_key: bytes

    def apply(self, socket: zmq.Socket[bytes]) -> None:
        """Sets the CURVE options of a socket that is about to connect."""
        socket.curve_serverkey = self.server_key
        socket.curve_publickey = self.public_key
        socket.curve_secretkey = self.secret_key

    @classmethod
    def load(cls, server_key: KeySpec, key: KeySpec) -> Curve:
        """Reads the server's public key (its `NAME.key`, or the Z85 text) and this peer's
        pair (a `NAME.key_secret`): the `--curve-server-key` and `--curve-key` of the CLI."""
        pub, sec = load_pair(key)
        return cls(server_key=load_public(server_key), public_key=pub, secret_key=sec)


def _is_z85_key(text: str) -> bool:
    if len(text) != 40:
        return False
    try:
        return len(z85.decode(text)) == 32
    except (ValueError, KeyError, IndexError, TypeError):
        return False


def _field(text: str, name: str) -> str | None:
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == name:
            return value.strip().strip('"')
    return None


def _read(path: KeySpec) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def load_public(spec: KeySpec) -> bytes:
    """A public key (Z85 bytes) from a `NAME.key` or `NAME.key_secret` file, a file that is
    one Z85 line, or the 40-character Z85 text itself."""
    text = os.fspath(spec)
    if _is_z85_key(text.strip()):
        return text.strip().encode()
    content = _read(spec)
    value = _field(content, "public-key")
    if value is None:
        lines = [
            line.strip()
            for line in content.splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
        value = lines[0] if len(lines) == 1 else None
    if value is None or not _is_z85_key(value):
        raise ValueError(f"key file {text}: no public-key in it")
    return value.encode()


def load_pair(path: KeySpec) -> tuple[bytes, bytes]:
    """The (public, secret) keys, Z85 bytes, of a `NAME.key_secret` file."""
    content = _read(path)
    public = _field(content, "public-key")
    secret = _field(content, "secret-key")
    if public is None or not _is_z85_key(public):
        raise ValueError(f"key file {os.fspath(path)}: no public-key in it")
    if secret is None or not _is_z85_key(secret):
        raise ValueError(
            f"key file {os.fspath(path)}: no secret-key in it: is this the public half?"
        )
    return public.encode(), secret.encode()
