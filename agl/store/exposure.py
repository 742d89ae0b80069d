"""Who may reach a store server: the bind rule (no token, no listening beyond this machine) and token sources.

A store server reachable from other machines without a token lets anyone who can reach the port read and change
every rollout, so binding anything but a loopback address without a token is refused unless the caller insists
(`--insecure`, `AGL_STORE_INSECURE=1`). The token can come from the command line (visible to every user in `ps`),
a file, or `AGL_STORE_TOKEN`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat

from agl.env_var import resolve_bool_env_var
from agl.store.http.wire import TOKEN_ENV

__all__ = [
    "INSECURE_ENV",
    "InsecureBindError",
    "TokenError",
    "allow_insecure_from_env",
    "check_bind",
    "is_loopback",
    "read_token_file",
    "refusal_message",
    "resolve_token",
]

logger = logging.getLogger(__name__)

INSECURE_ENV = "AGL_STORE_INSECURE"
"""Set to 1/true to let a store server listen beyond loopback without a token (as `agl store --insecure`)."""


class InsecureBindError(ValueError):
    """A store server was asked to listen where other machines can reach it, without a token."""


class TokenError(ValueError):
    """A token cannot be used: an empty one, or a token file that is unreadable, empty or open to every user."""


def _address_is_loopback(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) means this machine only: 127.0.0.0/8, ::1, or a name resolving only
    to those. All interfaces (`0.0.0.0`, `::`, ``), other addresses and names that do not resolve are not."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        return False
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:  # a name: every address it resolves to must be loopback
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return False
        return bool(infos) and all(_address_is_loopback(str(info[4][0])) for info in infos)
    return _address_is_loopback(host)


def refusal_message(host: str) -> str:
    """The one-line explanation of a refused bind, saying how to set a token."""
    return (
        f"refusing to serve the store on {host} without a token: anyone who can reach it could read and change "
        f"every rollout. Set {TOKEN_ENV}=<token> or pass --token-file FILE (runners send the same token), bind "
        f"127.0.0.1, or pass --insecure ({INSECURE_ENV}=1) to serve without one"
    )


def allow_insecure_from_env() -> bool:
    """Whether `AGL_STORE_INSECURE` asks to serve beyond loopback without a token (default false)."""
    return resolve_bool_env_var(INSECURE_ENV, fallback=False)


def check_bind(host: str, token: str | None, insecure: bool) -> None:
    """Apply the bind rule to the address a server listens on: InsecureBindError when it is not loopback and
    there is no token, unless `insecure` (then a warning is logged)."""
    if token or is_loopback(host):
        return
    if not insecure:
        raise InsecureBindError(refusal_message(host))
    logger.warning(
        "serving the store on %s WITHOUT a token (insecure): anyone who can reach this port can read and change "
        "every rollout; set %s or --token-file to require one",
        host,
        TOKEN_ENV,
    )


def read_token_file(path: str) -> str:
    """The token in the file at `path`, surrounding whitespace stripped.

    Raises TokenError when it cannot be read, is empty, or (on POSIX) other users may read or write it: a
    token every user can read protects nothing (`chmod 600 FILE`; a group may read it).
    """
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TokenError(f"cannot read the token file {path}: {reason}") from None
    if os.name == "posix" and mode & (stat.S_IROTH | stat.S_IWOTH):
        raise TokenError(
            f"the token file {path} can be read or written by every user of this machine (mode "
            f"{stat.filemode(mode)}); restrict it with `chmod 600 {path}`"
        )
    if not token:
        raise TokenError(f"the token file {path} is empty; write the store's bearer token into it")
    return token


def resolve_token(token: str | None, token_file: str | None) -> tuple[str | None, str | None]:
    """The server token and where it came from: `token` (the command line) if given, else the token file, else
    `AGL_STORE_TOKEN`, else none. Returns (token, source) with source "--token", "--token-file", TOKEN_ENV or None.
    """
    if token is not None:
        if not token.strip():
            raise TokenError("--token is empty; give the token, or leave --token out to serve without one")
        return token, "--token"
    if token_file is not None:
        return read_token_file(token_file), "--token-file"
    env = os.environ.get(TOKEN_ENV)
    if env:
        return env, TOKEN_ENV
    return None, None
