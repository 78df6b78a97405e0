"""--download against a small CIFAR-10-layout archive served on loopback (no internet here)."""

import hashlib
import http.server
import io
import pickle
import tarfile
import threading

import numpy as np
import pytest

from training.cli import main
from training.data import DatasetError, load_cifar10
from training.download import ensure_cifar10

from ..conftest import cli_args


def small_archive(per_batch: int = 60) -> bytes:
    """A real tar.gz in the CIFAR-10 python layout, with few images per batch."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
            if name == "batches.meta":
                doc = {"label_names": [f"c{i}" for i in range(10)]}
            else:
                doc = {
                    "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                    "labels": [i % 10 for i in range(per_batch)],
                }
            payload = pickle.dumps(doc)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@pytest.fixture
def served(monkeypatch):
    archive = small_archive()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(archive)))
            self.end_headers()
            self.wfile.write(archive)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/cifar-10-python.tar.gz"
    yield url, hashlib.md5(archive).hexdigest()
    httpd.shutdown()


def test_download_unpacks_a_checked_archive_once(served, tmp_path):
    url, md5 = served
    root = ensure_cifar10(tmp_path / "data", url, md5)
    train, test = load_cifar10(tmp_path / "data")
    assert root.name == "cifar-10-batches-py" and len(train) == 300 and len(test) == 60
    assert ensure_cifar10(tmp_path / "data", "http://127.0.0.1:9/unreachable", md5) == root  # present: no fetch
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".download-")]


def test_download_refuses_a_wrong_checksum_and_leaves_nothing(served, tmp_path):
    url, _ = served
    with pytest.raises(DatasetError, match="MD5"):
        ensure_cifar10(tmp_path / "data", url, "0" * 32)
    assert list((tmp_path / "data").iterdir()) == []


def test_offline_is_a_clear_cli_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # nothing listens
    assert (
        main(["evaluate", "--checkpoint", str(tmp_path / "x.pt"), "--data-dir", str(tmp_path / "d"), "--download"]) == 2
    )
    err = capsys.readouterr().err
    assert "cannot download CIFAR-10" in err and "offline?" in err


def test_download_command(served, tmp_path, monkeypatch, capsys):
    url, md5 = served
    monkeypatch.setenv("CIFAR10_URL", url)
    monkeypatch.setenv("CIFAR10_MD5", md5)
    assert main(["download", "--data-dir", str(tmp_path / "d")]) == 0
    assert "cifar-10-batches-py" in capsys.readouterr().out


def test_cli_trains_on_a_downloaded_copy(served, tmp_path, monkeypatch):
    url, md5 = served
    monkeypatch.setenv("CIFAR10_URL", url)
    monkeypatch.setenv("CIFAR10_MD5", md5)
    out = tmp_path / "run"
    assert (
        main(
            cli_args(
                "train",
                variant="erm",
                epochs="1",
                batch_size="32",
                workers="0",
                out=out,
                data_dir=tmp_path / "d",
                download=True,
            )
        )
        == 0
    )
    assert (out / "checkpoint.pt").is_file() and (tmp_path / "d" / "cifar-10-batches-py" / "test_batch").is_file()
