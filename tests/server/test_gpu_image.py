"""The GPU image's CUDA matches the onnxruntime-gpu that constraints.txt pins: the wheel's `cuda`
extra names the CUDA runtime its provider links (`nvidia-cuda-runtime~=13.0`), and ONNX Runtime
falls back to the CPU, silently but for a log line, on a base image of another CUDA major.

The wheel is 244 MB: only its METADATA is read, with HTTP range requests into the zip on PyPI."""

import io
import json
import re
import urllib.error
import urllib.request
import zipfile

import pytest

from ..conftest import REPO

INDEX = "https://pypi.org/simple/onnxruntime-gpu/"


class RemoteFile(io.RawIOBase):
    """A file on an HTTP server that answers range requests, read only where zipfile seeks."""

    def __init__(self, url: str):
        self.url, self.pos = url, 0
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30) as reply:
            self.size = int(reply.headers["Content-Length"])

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.size - self.pos)
        if n <= 0:
            return 0
        request = urllib.request.Request(self.url, headers={"Range": f"bytes={self.pos}-{self.pos + n - 1}"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            data = reply.read()
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def pinned(name: str) -> str:
    match = re.search(rf"^{re.escape(name)}==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert match, f"constraints.txt pins no {name}"
    return match[1]


def wheel_metadata(version: str) -> str:
    request = urllib.request.Request(INDEX, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        files = json.load(urllib.request.urlopen(request, timeout=30))["files"]
        url = next(
            f["url"]
            for f in files
            if re.fullmatch(
                rf"onnxruntime_gpu-{re.escape(version)}-cp311-cp311-manylinux_[0-9_]+_x86_64\.whl", f["filename"]
            )
        )
        wheel = zipfile.ZipFile(io.BufferedReader(RemoteFile(url), buffer_size=1 << 16))
    except (urllib.error.URLError, TimeoutError) as exc:
        pytest.skip(f"PyPI not reachable: {exc}")
    return wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))).decode()


def test_gpu_base_image_has_the_cuda_major_onnxruntime_gpu_links():
    metadata = wheel_metadata(pinned("onnxruntime-gpu"))
    runtime = re.search(r'^Requires-Dist: nvidia-cuda-runtime~=(\d+)\.\d+; extra == "cuda"', metadata, re.M)
    assert runtime, "the wheel's cuda extra no longer names nvidia-cuda-runtime: read its provider's NEEDED libraries"
    base = re.search(
        r"^FROM nvidia/cuda:(\d+)\.[\d.]+-cudnn-runtime-\S+ AS base-gpu$", (REPO / "Dockerfile").read_text(), re.M
    )
    assert base, "the Dockerfile's GPU stage is not an nvidia/cuda cudnn-runtime image"
    assert base[1] == runtime[1], (
        f"onnxruntime-gpu {pinned('onnxruntime-gpu')} links CUDA {runtime[1]}, the GPU image has CUDA {base[1]}"
    )
