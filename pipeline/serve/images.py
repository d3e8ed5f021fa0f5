"""The image of a request: its bytes from a `data:` URL, a path, `s3://` or an allowed host.

`ImageRules` says what an endpoint accepts; the default is `data:` URLs only. A local path
must lie under one of `roots` (after resolving `..` and links); `s3://` goes through the
job's storage settings (`pipeline.storage`); `http(s)://` only to hosts on `hosts`, and
even then never to an address that is loopback, private, link-local (the cloud metadata
service at 169.254.169.254 is one), multicast or otherwise reserved: the name is resolved
here, every address it resolves to is checked, and the connection goes to a checked
address (a name that changes its answer between the check and the connection cannot
redirect it). Redirects are not followed. Downloads stop at `max_bytes` and `timeout_s`.
A refused or failed image raises `ImageError`, which the endpoint turns into a 400 naming
the message part.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.storage import StorageArgs, locate, read_bytes

SCHEMES = ("data", "file", "path", "s3", "http", "https")


class ImageError(ValueError):
    """An image URL the endpoint does not accept or cannot read."""


@dataclass
class ImageRules:
    """Where request images may come from (the endpoint's `images.*` settings)."""

    schemes: list[str] = field(default_factory=lambda: ["data"])  # of SCHEMES
    roots: list[str] = field(default_factory=list)  # local folders paths may lie under
    hosts: list[str] = field(default_factory=list)  # http(s) hosts allowed (exact names)
    max_bytes: int = 20_000_000  # a larger image is refused
    timeout_s: float = 10.0  # per download
    storage: StorageArgs = field(default_factory=StorageArgs)  # for s3:// images

    def check(self) -> None:
        unknown = sorted(set(self.schemes) - set(SCHEMES))
        if unknown:
            raise ValueError(f"images.schemes: {unknown[0]!r} is not one of {SCHEMES}")
        if ("file" in self.schemes or "path" in self.schemes) and not self.roots:
            raise ValueError("images.roots: local paths need the folders they may lie under")
        if any(s in self.schemes for s in ("http", "https")) and not self.hosts:
            raise ValueError("images.hosts: http(s) images need the hosts they may come from")
        if self.max_bytes < 1 or self.timeout_s <= 0:
            raise ValueError("images.max_bytes must be >= 1 and images.timeout_s > 0")


def fetch(url: str, rules: ImageRules) -> bytes:
    """The bytes of the image at `url`, if the rules allow it."""
    scheme = "path" if url.startswith("/") else urlsplit(url).scheme.lower()
    if scheme not in rules.schemes:
        allowed = ", ".join(rules.schemes)
        raise ImageError(f"image URLs of scheme {scheme or '(none)'!r} are not accepted here "
                         f"(accepted: {allowed})")
    if scheme == "data":
        return data_url_bytes(url, rules.max_bytes)
    if scheme in ("file", "path"):
        return _local(urlsplit(url).path if scheme == "file" else url, rules)
    if scheme == "s3":
        return _limited(read_bytes(locate(url, rules.storage)), rules.max_bytes)
    return _http(url, rules)


def data_url_bytes(url: str, max_bytes: int) -> bytes:
    """The image in a `data:image/<type>;base64,...` URL; ImageError if it is not one."""
    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:image/") or not head.endswith(";base64"):
        raise ImageError("a data URL must be data:image/<type>;base64,<data>")
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise ImageError(f"the image is larger than {max_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("the data URL is not valid base64") from None


def _local(path: str, rules: ImageRules) -> bytes:
    real = Path(path).resolve()
    if not any(real.is_relative_to(Path(r).resolve()) for r in rules.roots):
        raise ImageError(f"{path} is not under an allowed image folder")
    try:
        with real.open("rb") as f:
            return _limited(f.read(rules.max_bytes + 1), rules.max_bytes)
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror or e}") from None


def _limited(data: bytes, max_bytes: int) -> bytes:
    if len(data) > max_bytes:
        raise ImageError(f"the image is larger than {max_bytes} bytes")
    return data


def public_address(host: str, port: int) -> str:
    """An address `host` resolves to, every one of which is public; ImageError otherwise."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ImageError(f"cannot resolve {host}: {e.strerror}") from None
    addresses = sorted({info[4][0] for info in infos})
    for a in addresses:
        ip = ipaddress.ip_address(a.split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise ImageError(f"{host} resolves to {a}, a loopback, private, link-local or "
                             "reserved address: refused")
    if not addresses:
        raise ImageError(f"{host} resolves to no address")
    return addresses[0]


def _http(url: str, rules: ImageRules) -> bytes:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host not in {h.lower() for h in rules.hosts}:
        raise ImageError(f"images from {host or '(no host)'} are not accepted here")
    https = parts.scheme.lower() == "https"
    port = parts.port or (443 if https else 80)
    address = public_address(host, port)
    conn = (_PinnedHTTPS(host, address, port, rules.timeout_s) if https
            else _PinnedHTTP(address, port, timeout=rules.timeout_s))
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target,
                     headers={"Host": parts.netloc, "User-Agent": "mqt-serve"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise ImageError(f"{url} answered HTTP {resp.status}")
        return _limited(resp.read(rules.max_bytes + 1), rules.max_bytes)
    except (OSError, http.client.HTTPException) as e:
        raise ImageError(f"cannot fetch {url}: {e}") from None
    finally:
        conn.close()


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to the address that was checked."""


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection to the checked address, its certificate checked for the host."""

    def __init__(self, host: str, address: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
