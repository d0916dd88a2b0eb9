"""`harness assets|fetch|import` through the lead's main(): exit codes and one-line errors."""
import hashlib

from harness.cli.main import main

PAYLOAD = b"downloaded by hand"


def test_assets_list_shows_every_recipe(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert main(["assets", "list"]) == 0
    out = capsys.readouterr().out
    assert "debian-cloud-kernel-arm64" in out and "not built" in out


def test_build_of_unknown_asset_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert main(["assets", "build", "no-such-asset"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown asset recipe 'no-such-asset'") and "Traceback" not in err


def test_fetch_unknown_guest(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    assert main(["fetch", "no-such-guest"]) == 2
    assert "no guest file" in capsys.readouterr().err


def test_verify_reports_and_removes_corruption(tmp_path, monkeypatch, capsys):
    from harness.assets.cache import AssetCache
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    src = tmp_path / "f"
    src.write_bytes(b"abc")
    entry = AssetCache(tmp_path).commit("thing", src, {})
    assert main(["assets", "verify"]) == 0
    entry.path.chmod(0o644)
    entry.path.write_bytes(b"abd")
    assert main(["assets", "verify"]) == 1
    assert "CORRUPT thing" in capsys.readouterr().out
    assert AssetCache(tmp_path).lookup("thing") is None


def test_import_for_a_catalog_guest(tmp_path, monkeypatch, capsys):
    """netbsd-amd64's checksum file is out of reach here: the import is kept and flagged unchecked."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    import harness.assets.sources as sources

    def offline(url: str) -> bytes:
        raise sources.AssetError(f"cannot read checksum file {url}", "offline")

    monkeypatch.setattr(sources, "_download_small", offline)
    f = tmp_path / "netbsd-INSTALL.gz"
    f.write_bytes(PAYLOAD)
    assert main(["import", "netbsd-amd64", str(f)]) == 0
    captured = capsys.readouterr()
    assert hashlib.sha256(PAYLOAD).hexdigest() in captured.out and "unchecked" in captured.err


def test_import_with_a_local_checksum_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    f = tmp_path / "bsd.rd"
    f.write_bytes(PAYLOAD)
    sums = tmp_path / "SHA256"
    sums.write_text(f"SHA256 (bsd.rd) = {'0' * 64}\n")
    assert main(["import", "openbsd-amd64", str(f), "--checksum-file", str(sums)]) == 2
    assert "expected " + "0" * 64 in capsys.readouterr().err
    sums.write_text(f"SHA256 (bsd.rd) = {hashlib.sha256(PAYLOAD).hexdigest()}\n")
    assert main(["import", "openbsd-amd64", str(f), "--checksum-file", str(sums)]) == 0
    captured = capsys.readouterr()
    assert hashlib.sha256(PAYLOAD).hexdigest() in captured.out and "unchecked" not in captured.err
