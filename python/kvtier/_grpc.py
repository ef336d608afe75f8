"""What every kvtier client shares: its error, its channel (TLS, message sizes) and its token."""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple, Union

import grpc

# A PEM input: a file path (str or os.PathLike), as the CLI's --tls-* flags take, or the bytes.
Pem = Union[str, "os.PathLike[str]", bytes, None]


class KvtierError(grpc.RpcError):
    """A kvtier call failed. Like grpc's own errors, `code()` is the grpc.StatusCode and
    `details()` the message, and `except grpc.RpcError` catches it too; str() is "CODE: details".
    """

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        """The gRPC status code (grpc.StatusCode)."""
        return self._code

    def details(self) -> str:
        """The message that came with the status."""
        return self._details

    @classmethod
    def of(cls, e: grpc.RpcError) -> "KvtierError":
        """The KvtierError for an error grpc raised (itself when it already is one)."""
        if isinstance(e, KvtierError):
            return e
        return cls(e.code(), e.details() or "")


def _read_pem(value: Pem, what: str) -> Optional[bytes]:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        raise ValueError(f"{what}: a str is a file path; give PEM contents as bytes")
    if isinstance(value, (str, os.PathLike)):
        try:
            with open(value, "rb") as f:
                return f.read()
        except OSError as e:
            raise ValueError(f"{what}: cannot read {os.fspath(value)!r}: {e.strerror}") from None
    raise TypeError(f"{what}: a file path or PEM bytes, not {type(value).__name__}")


def channel_args(address: str, tls_ca: Pem, tls_cert: Pem, tls_key: Pem,
                 tls_server_name: Optional[str], max_message_bytes: int
                 ) -> Tuple[Optional[grpc.ChannelCredentials], List[Tuple[str, object]]]:
    """(credentials or None for plaintext, channel options), the options checked.

    TLS is on when tls_ca is given (the CA that signed the server's certificate), as with the
    CLI's --tls-ca; tls_cert and tls_key (both or neither) are a client certificate for mutual TLS.
    """
    if not address:
        raise ValueError("address: must be set")
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls_cert and tls_key: give both or neither")
    if tls_ca is None and (tls_cert is not None or tls_server_name):
        raise ValueError("tls_cert, tls_key and tls_server_name: need tls_ca (TLS is on with it)")
    options: List[Tuple[str, object]] = [("grpc.max_receive_message_length", max_message_bytes),
                                         ("grpc.max_send_message_length", max_message_bytes)]
    if tls_ca is None:
        return None, options
    creds = grpc.ssl_channel_credentials(_read_pem(tls_ca, "tls_ca"), _read_pem(tls_key, "tls_key"),
                                         _read_pem(tls_cert, "tls_cert"))
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    return creds, options


def channel(address: str, *, tls_ca: Pem = None, tls_cert: Pem = None, tls_key: Pem = None,
            tls_server_name: Optional[str] = None, max_message_bytes: int) -> grpc.Channel:
    """A blocking channel to `address` (see channel_args)."""
    creds, options = channel_args(address, tls_ca, tls_cert, tls_key, tls_server_name,
                                  max_message_bytes)
    if creds is None:
        return grpc.insecure_channel(address, options)
    return grpc.secure_channel(address, creds, options)


def aio_channel(address: str, *, tls_ca: Pem = None, tls_cert: Pem = None, tls_key: Pem = None,
                tls_server_name: Optional[str] = None, max_message_bytes: int):
    """A grpc.aio channel to `address` (see channel_args)."""
    from grpc import aio
    creds, options = channel_args(address, tls_ca, tls_cert, tls_key, tls_server_name,
                                  max_message_bytes)
    if creds is None:
        return aio.insecure_channel(address, options)
    return aio.secure_channel(address, creds, options)


def auth_metadata(token: Optional[str]) -> Sequence[Tuple[str, str]]:
    """The call metadata carrying a bearer token (none without one)."""
    if token is not None and not isinstance(token, str):
        raise TypeError(f"token: a str, not {type(token).__name__}")
    return (("authorization", f"Bearer {token}"),) if token else ()


class ChannelOwner:
    """A client's channel and call metadata (the token). `_open` makes the channel: `channel`
    here, `aio_channel` for kvtier.aio."""

    _open = staticmethod(channel)

    def __init__(self, address: str, token: Optional[str], tls_ca: Pem, tls_cert: Pem,
                 tls_key: Pem, tls_server_name: Optional[str], max_message_bytes: int):
        self._metadata = auth_metadata(token)
        self._channel = self._open(address, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                                   tls_server_name=tls_server_name,
                                   max_message_bytes=max_message_bytes)


class Closing(ChannelOwner):
    """A blocking client's channel; a context manager that closes it."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel; calls after it fail."""
        self._channel.close()
