"""pipeline/serve/images.py: data: URLs by default; paths only under the allowed folders;
http(s) only to allowed hosts, and never to a loopback, private or link-local address."""

import base64
import socket

import pytest

from pipeline.serve.images import ImageError, ImageRules, fetch, public_address

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 20


def data_url(data: bytes = PNG) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_data_urls_are_the_default_and_everything_else_is_refused():
    assert fetch(data_url(), ImageRules()) == PNG
    for url in ("/etc/passwd", "file:///etc/passwd", "s3://b/k.png", "http://example.com/a.png",
                "ftp://example.com/a.png"):
        with pytest.raises(ImageError, match="not accepted here"):
            fetch(url, ImageRules())


@pytest.mark.parametrize("url, why", [
    ("data:text/plain;base64,aGk=", "data:image/"), ("data:image/png,raw", "base64"),
    ("data:image/png;base64,@@@", "not valid base64")])
def test_bad_data_urls(url, why):
    with pytest.raises(ImageError, match=why):
        fetch(url, ImageRules())


def test_size_limit():
    with pytest.raises(ImageError, match="larger than 10 bytes"):
        fetch(data_url(), ImageRules(max_bytes=10))


def test_paths_only_under_the_allowed_folders(tmp_path):
    root, outside = tmp_path / "images", tmp_path / "secret.png"
    root.mkdir()
    (root / "a.png").write_bytes(PNG)
    outside.write_bytes(PNG)
    (root / "link.png").symlink_to(outside)
    rules = ImageRules(schemes=["path", "file"], roots=[str(root)])
    assert fetch(str(root / "a.png"), rules) == PNG
    assert fetch(f"file://{root / 'a.png'}", rules) == PNG
    for path in (str(outside), f"{root}/../secret.png", str(root / "link.png")):
        with pytest.raises(ImageError, match="not under an allowed image folder"):
            fetch(path, rules)
    with pytest.raises(ImageError, match="cannot read"):
        fetch(str(root / "missing.png"), rules)


def test_http_only_to_allowed_hosts_and_never_to_internal_addresses():
    rules = ImageRules(schemes=["http", "https"], hosts=["localhost", "127.0.0.1"],
                       timeout_s=2)
    with pytest.raises(ImageError, match="not accepted here"):
        fetch("http://example.com/a.png", rules)
    for url in ("http://localhost:9/a.png", "https://127.0.0.1/a.png"):
        with pytest.raises(ImageError, match="refused"):  # before any connection
            fetch(url, rules)
    for host in ("169.254.169.254", "10.0.0.1", "192.168.1.1", "::1", "224.0.0.1"):
        with pytest.raises(ImageError, match="refused"):
            public_address(host, 80)


def test_a_public_address_passes(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", 80))])
    assert public_address("example.com", 80) == "93.184.215.14"


def test_settings_are_checked():
    for rules, field in ((ImageRules(schemes=["gopher"]), "images.schemes"),
                         (ImageRules(schemes=["path"]), "images.roots"),
                         (ImageRules(schemes=["https"]), "images.hosts")):
        with pytest.raises(ValueError, match=field):
            rules.check()
