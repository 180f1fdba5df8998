"""Tests of the pinned downloader against a local HTTP server (never the internet)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import socket
import threading

import pytest

from regseg.datasets import download as dl


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server naming)
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture()
def server(tmp_path, monkeypatch):
    """A local HTTP server on 127.0.0.1 (ephemeral port) serving tmp_path/www; no internet access."""
    www = tmp_path / "www"
    www.mkdir()
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    real_connect = socket.socket.connect

    def local_only(sock, address):  # any attempt to reach the internet fails the test
        host = address[0] if isinstance(address, tuple) else address
        assert host in ("127.0.0.1", "localhost"), f"test tried to reach {address}"
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    try:
        yield www, f"http://127.0.0.1:{httpd.server_address[1]}/base/", _Handler.requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def _publish(www, rel, content: bytes):
    path = www / "base" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return hashlib.sha256(content).hexdigest()


def test_download_verify_and_skip(server, tmp_path):
    www, base, requests = server
    files = [("a/one.bin", "data/x/one.bin", _publish(www, "a/one.bin", os.urandom(3000))),
             ("b/two.csv", "data/two.csv", _publish(www, "b/two.csv", b"id,age\n1,2\n"))]
    dest = tmp_path / "dest"
    paths = dl.download_files(files, dest, base)
    assert paths == [dest / "data/x/one.bin", dest / "data/two.csv"]
    for (remote, local, sha), path in zip(files, paths):
        assert path.read_bytes() == (www / "base" / remote).read_bytes()
        assert dl.sha256_of(path) == sha
    assert len(requests) == 2
    dl.download_files(files, dest, base)            # present with the right checksum: skipped
    assert len(requests) == 2
    (dest / "data/two.csv").write_bytes(b"tampered")  # wrong checksum: fetched again
    dl.download_files(files, dest, base)
    assert len(requests) == 3 and (dest / "data/two.csv").read_bytes() == b"id,age\n1,2\n"


def test_checksum_mismatch_raises_and_leaves_no_file(server, tmp_path):
    www, base, _ = server
    _publish(www, "c.bin", b"the real bytes")
    dest = tmp_path / "dest"
    with pytest.raises(dl.DownloadError) as e:
        dl.download_files([("c.bin", "sub/c.bin", "0" * 64)], dest, base)
    assert f"{base}c.bin" in str(e.value) and "checksum mismatch" in str(e.value)
    assert not (dest / "sub" / "c.bin").exists()
    assert os.listdir(dest / "sub") == []           # no partial/temporary file either


def test_http_error_names_url(server, tmp_path):
    _, base, _ = server
    with pytest.raises(dl.DownloadError) as e:
        dl.download_files([("missing.bin", "m.bin", "0" * 64)], tmp_path / "d", base)
    assert f"{base}missing.bin" in str(e.value) and "404" in str(e.value)
    assert os.listdir(tmp_path / "d") == []


def test_ixi10_files_match_shipped_checksums(ixi10_root):
    sums = {}
    for line in (ixi10_root / "SHA256SUMS").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            sha, rel = line.split()
            sums["ixi10/" + rel] = sha
    assert {local: sha for _, local, sha in dl.IXI10_FILES} == sums
    assert dl.IXI10_BASE_URL.startswith("https://raw.githubusercontent.com/CBICA/")
    assert "ec021b5aafc9ddf7ed08f0bca1ce4b673e3bfc4f" in dl.IXI10_BASE_URL


def test_download_ixi10_cli_from_local_mirror(server, ixi10_root, tmp_path):
    """The real files, published under their remote names, are fetched and verified by the CLI."""
    www, base, _ = server
    for remote, local, _ in dl.IXI10_FILES:
        target = www / "base" / remote
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(ixi10_root / local.removeprefix("ixi10/"))
    dest = tmp_path / "root"
    assert dl.main(["ixi10", "--dest", str(dest), "--base-url", base]) == 0
    for _, local, sha in dl.IXI10_FILES:
        assert dl.sha256_of(dest / local) == sha
    # and the result is a loadable ixi10 folder
    from regseg.datasets.ixi10 import ixi10_subjects
    assert len(ixi10_subjects(dest)) == 10


def test_cli_reports_failure(server, tmp_path, capsys):
    _, base, _ = server
    assert dl.main(["ixi10", "--dest", str(tmp_path / "d"), "--base-url", base]) == 1
    assert "error:" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "d", ignore_errors=True)
