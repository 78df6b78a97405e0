"""CIFAR-10 download (`--download`): the official archive, checked against its published MD5,
unpacked into the data directory. Where a copy already exists nothing is fetched.

The URL and checksum can point at a mirror through CIFAR10_URL / CIFAR10_MD5.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from .data import BATCH_DIR, DatasetError, resolve_batch_dir

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"  # published on https://www.cs.toronto.edu/~kriz/cifar.html


def ensure_cifar10(data_dir: str | Path, url: str | None = None, md5: str | None = None) -> Path:
    """The batch directory under data_dir, downloading and unpacking the archive when missing."""
    data_dir = Path(data_dir)
    try:
        return resolve_batch_dir(data_dir)
    except DatasetError:
        pass
    url = url or os.environ.get("CIFAR10_URL", URL)
    md5 = md5 or os.environ.get("CIFAR10_MD5", MD5)
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".download-") as tmp:
        archive = Path(tmp) / "cifar-10-python.tar.gz"
        digest = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=30) as response, archive.open("wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc="CIFAR-10", leave=False) as bar:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DatasetError(
                f"cannot download CIFAR-10 from {url}: {reason} (offline? put "
                f"{BATCH_DIR}/ under {data_dir} yourself, or set CIFAR10_URL to a mirror)"
            ) from None
        if digest.hexdigest() != md5:
            raise DatasetError(
                f"downloaded {url} has MD5 {digest.hexdigest()}, expected {md5}: "
                "incomplete or not the CIFAR-10 python archive; nothing unpacked"
            )
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        if not (Path(tmp) / BATCH_DIR).is_dir():
            raise DatasetError(f"{url} holds no {BATCH_DIR}/ folder; nothing unpacked")
        shutil.move(str(Path(tmp) / BATCH_DIR), data_dir / BATCH_DIR)  # whole folder or nothing
    return resolve_batch_dir(data_dir)
