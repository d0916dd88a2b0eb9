"""Source resolution, fetch and import: checksums, interrupted downloads, the right error messages."""
import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from harness.assets import sources
from harness.assets.cache import AssetCache
from harness.errors import AssetError

PAYLOAD = b"guest image bytes " * 5000
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
SHA512 = hashlib.sha512(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/image.img":
            self._send(PAYLOAD)
        elif self.path == "/image.img.gz":
            self._send(gzip.compress(PAYLOAD, mtime=0))
        elif self.path == "/SHA512":
            self._send(f"SHA512 (other.img) = {'0' * 128}\nSHA512 (image.img) = {SHA512}\n".encode())
        elif self.path == "/SHA256SUMS":
            self._send(f"{SHA256}  image.img\n".encode())
        elif self.path == "/truncated.img":
            # Promise the whole body, send a third, then drop the connection.
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
            self.wfile.flush()
            self.connection.shutdown(2)
        else:
            self.send_error(404)

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def cache(tmp_path):
    return AssetCache(tmp_path / "cache")


def _guest(tmp_path: Path, name: str, disk: dict) -> Path:
    import yaml
    d = tmp_path / "guests"
    d.mkdir(exist_ok=True)
    (d / f"{name}.yaml").write_text(yaml.safe_dump({"family": "other", "arch": "x86_64", "boot": "firmware",
                                                     "disk": disk, "milestones": []}))
    return d


def _nothing_left(cache: AssetCache):
    assert cache.names() == []
    tmp = cache.root / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def test_fetch_with_inline_sha256_then_resolve(tmp_path, server, cache):
    src = {"url": f"{server}/image.img", "sha256": SHA256}
    gdir = _guest(tmp_path, "g", src)
    with pytest.raises(AssetError) as e:
        sources.resolve(src, guest="g", cache=cache)
    assert "harness fetch g" in e.value.fix and "harness import g" in e.value.fix
    [entry] = sources.fetch("g", cache=cache, guests_dir=gdir)
    assert entry.sha256 == SHA256
    got = sources.resolve(src, guest="g", cache=cache)
    assert got.path.read_bytes() == PAYLOAD and got.provenance["url"] == src["url"]


@pytest.mark.parametrize("listing,fmt,algorithm", [("SHA512", "bsd", "sha512"), ("SHA256SUMS", "sha256", "sha256")])
def test_fetch_with_checksum_file(tmp_path, server, cache, listing, fmt, algorithm):
    src = {"url": f"{server}/image.img", "checksum_url": f"{server}/{listing}", "checksum_format": fmt}
    [entry] = sources.fetch("g", cache=cache, guests_dir=_guest(tmp_path, "g", src))
    assert entry.sha256 == SHA256 and entry.provenance["checksum"].split(":")[0] == algorithm


def test_checksum_mismatch_is_clear_and_stores_nothing(tmp_path, server, cache):
    src = {"url": f"{server}/image.img", "sha256": "ab" * 32}
    with pytest.raises(AssetError) as e:
        sources.fetch("g", cache=cache, guests_dir=_guest(tmp_path, "g", src))
    assert "expected " + "ab" * 32 in e.value.problem
    _nothing_left(cache)


def test_interrupted_download_leaves_nothing(tmp_path, server, cache, monkeypatch):
    monkeypatch.setattr(sources, "_RETRY_DELAY_S", 0.0)
    src = {"url": f"{server}/truncated.img", "sha256": SHA256}
    with pytest.raises(AssetError, match="truncated.img"):
        sources.fetch("g", cache=cache, guests_dir=_guest(tmp_path, "g", src))
    _nothing_left(cache)
    assert not (cache.root / "blobs").exists() or not any((cache.root / "blobs").rglob("*"))


def test_decompressed_on_request(tmp_path, server, cache):
    src = {"url": f"{server}/image.img.gz", "sha256": hashlib.sha256(gzip.compress(PAYLOAD, mtime=0)).hexdigest(),
           "decompress": True}
    sources.fetch("g", cache=cache, guests_dir=_guest(tmp_path, "g", src))
    assert sources.resolve(src, guest="g", cache=cache).path.read_bytes() == PAYLOAD


def test_import_checks_the_known_checksum(tmp_path, cache):
    src = {"url": "https://example.invalid/pub/image.img", "sha256": SHA256}
    gdir = _guest(tmp_path, "g", src)
    wrong = tmp_path / "image.img"
    wrong.write_bytes(b"not it")
    with pytest.raises(AssetError, match="sha256"):
        sources.import_file("g", wrong, cache=cache, guests_dir=gdir)
    _nothing_left(cache)
    right = tmp_path / "dl" / "image.img"
    right.parent.mkdir()
    right.write_bytes(PAYLOAD)
    entry = sources.import_file("g", right, cache=cache, guests_dir=gdir)
    assert entry.sha256 == SHA256
    assert sources.resolve(src, guest="g", cache=cache).sha256 == SHA256


def test_import_offline_with_unreachable_checksum_file_is_recorded_unchecked(tmp_path, cache):
    src = {"url": "https://example.invalid/image.img", "checksum_url": "https://example.invalid/SHA256",
           "checksum_format": "bsd"}
    f = tmp_path / "image.img"
    f.write_bytes(PAYLOAD)

    def offline(url):
        raise AssetError(f"cannot read checksum file {url}", "offline")

    entry = sources.import_file("g", f, cache=cache, guests_dir=_guest(tmp_path, "g", src), opener=offline)
    assert entry.provenance["checksum"].startswith("unchecked")


def test_missing_asset_offline_names_the_build_command(cache):
    with pytest.raises(AssetError) as e:
        sources.resolve({"asset": "busybox-initramfs-amd64"}, guest="g", cache=cache)
    assert e.value.fix == "harness assets build busybox-initramfs-amd64"


def test_path_source_relative_to_repo_and_checked(tmp_path):
    f = tmp_path / "k"
    f.write_bytes(b"kernel")
    got = sources.resolve({"path": str(f)}, guest="g")
    assert got.sha256 == hashlib.sha256(b"kernel").hexdigest()
    with pytest.raises(AssetError, match="does not exist"):
        sources.resolve({"path": "no/such/file"}, guest="g")
    with pytest.raises(AssetError, match="expects"):
        sources.resolve({"path": str(f), "sha256": "00" * 32}, guest="g")


def test_bsd_checksum_parsing_picks_the_right_file():
    text = "SHA256 (bsd) = " + "1" * 64 + "\nSHA256 (bsd.rd) = " + "2" * 64 + "\n"
    assert sources.parse_checksum_file(text, "bsd.rd", "bsd") == ("sha256", "2" * 64)
    with pytest.raises(AssetError, match="no bsd line for bsd.mp"):
        sources.parse_checksum_file(text, "bsd.mp", "bsd")


def test_non_http_urls_are_refused(tmp_path, cache):
    src = {"url": "file:///etc/passwd", "sha256": SHA256}
    with pytest.raises(AssetError, match="only http"):
        sources.fetch("g", cache=cache, guests_dir=_guest(tmp_path, "g", src))
    _nothing_left(cache)


def test_a_dropped_connection_is_retried(tmp_path, server, cache, monkeypatch):
    monkeypatch.setattr(sources, "_RETRY_DELAY_S", 0.0)
    calls = []
    real = sources._download

    def flaky(url, target):
        calls.append(url)
        real(url.replace("/image.img", "/truncated.img") if len(calls) == 1 else url, target)

    monkeypatch.setattr(sources, "_download", flaky)
    src = {"url": f"{server}/image.img", "sha256": SHA256}
    [entry] = sources.fetch("g", cache=cache, guests_dir=_guest(tmp_path, "g", src))
    assert entry.sha256 == SHA256 and len(calls) == 2
