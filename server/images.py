"""Uploaded bytes -> 32x32 RGB uint8, safely and with bounded memory (Pillow), and the manifest's
normalisation.

Any common format (PNG, JPEG, BMP, WebP, GIF: first frame, ...) is opened with Pillow and checked
against the pixel cap before decoding, fully decoded (so truncated files fail here), converted to
RGB (transparency composited on black, as convert("RGB") does) and resized to 32x32 with
bilinear filtering (Pillow's antialiased resize) when it is not 32x32 already. JPEGs larger than
DRAFT_SIZE are decoded at a reduced scale (libjpeg's DCT scaling, 1/2 to 1/8) that still leaves
at least DRAFT_SIZE pixels per side: 4x the model's input, so the bilinear resize sees the same
picture at a small fraction of the memory and time.

Memory is bounded by a pixel budget shared by every decode (DecodePool): an image takes its
pixel count out of the budget before it is decoded and gives it back after, so a few large
uploads decode one at a time while many small ones decode side by side. With the default caps
(16 MP per image, budget = one such image) decoding holds at most about 16 MP x 4 bytes (Pillow
stores RGB as 32-bit pixels) twice over (decode + RGB conversion): ~130 MB above idle.
"""

from __future__ import annotations

import asyncio
import io
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

SIZE = (32, 32)
DRAFT_SIZE = (128, 128)
# An upload in memory of at most SMALL_BYTES that opens as at most SMALL_PIXELS pixels decodes on the
# event loop: a CIFAR-sized PNG takes ~0.12 ms there, less than the CPU a hand-off to a decoding
# thread and back costs (~0.16 ms a request, measured: 0.31 against 0.15 ms of CPU an image).
SMALL_BYTES = 64 * 1024
SMALL_PIXELS = 64 * 64


class ImageError(ValueError):
    """A bad upload; status is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class PixelBudget:
    """Pixels that may be decoded at once, across threads. A request larger than the whole budget
    waits for all of it (so it still runs, alone)."""

    def __init__(self, pixels: int):
        self.capacity = self.free = pixels
        self._cond = threading.Condition()

    def acquire(self, pixels: int) -> int:
        pixels = min(pixels, self.capacity)
        with self._cond:
            self._cond.wait_for(lambda: self.free >= pixels)
            self.free -= pixels
        return pixels

    def release(self, pixels: int) -> None:
        with self._cond:
            self.free += pixels
            self._cond.notify_all()


def decode_image(
    data: bytes, max_bytes: int, max_pixels: int, budget: PixelBudget | None = None, small_only: bool = False
) -> np.ndarray | None:
    """The image as 32x32 RGB uint8, or ImageError. `small_only`: None, undecoded, for an image of
    more than SMALL_PIXELS pixels."""
    if not data:
        raise ImageError(400, "empty file: the upload has zero bytes")
    if len(data) > max_bytes:
        raise ImageError(413, f"file too large: {len(data)} bytes > limit of {max_bytes} bytes")
    taken = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    413,
                    f"image too large: {width}x{height} = {width * height} pixels > "
                    f"limit of {max_pixels} (decompression bomb?)",
                )
            if small_only and width * height > SMALL_PIXELS:
                return None
            if image.format == "JPEG" and (width > DRAFT_SIZE[0] or height > DRAFT_SIZE[1]):
                image.draft("RGB", DRAFT_SIZE)
                width, height = image.size
            if budget is not None:
                taken = budget.acquire(width * height)
            image.load()
            if image.mode != "RGB":
                image = image.convert("RGB")
            if image.size != SIZE:
                image = image.resize(SIZE, Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(413, f"image too large (decompression bomb): {exc}") from None
    except UnidentifiedImageError:
        raise ImageError(415, "not an image: the file is in no format Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated / corrupt data
        raise ImageError(400, f"corrupt or truncated image: {exc}") from None
    finally:
        if taken:
            budget.release(taken)


class DecodePool:
    """A few decoding threads (one per CPU) under one pixel budget, and small uploads decoded on the
    event loop. Spooled uploads are read inside the pool too, so at most `workers` of them are held
    as bytes at once."""

    def __init__(self, workers: int, max_bytes: int, max_pixels: int, budget_pixels: int):
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self.budget = PixelBudget(budget_pixels)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")

    def _decode_file(self, file: BinaryIO) -> np.ndarray:
        file.seek(0)
        return self._decode(file.read(self.max_bytes + 1))

    def _decode(self, data: bytes) -> np.ndarray:
        return decode_image(data, self.max_bytes, self.max_pixels, self.budget)

    async def decode(self, upload: bytes | BinaryIO) -> np.ndarray:
        """An upload's image: `upload` the bytes already in memory, or a (spooled) file."""
        loop = asyncio.get_running_loop()
        if not isinstance(upload, bytes):
            return await loop.run_in_executor(self.executor, self._decode_file, upload)
        if len(upload) <= SMALL_BYTES:
            image = decode_image(upload, self.max_bytes, self.max_pixels, small_only=True)
            if image is not None:
                return image
        return await loop.run_in_executor(self.executor, self._decode, upload)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


def normalize(images: np.ndarray, mean, std, scale: float) -> np.ndarray:
    """uint8 N x 32 x 32 x 3 -> float32 N x 3 x 32 x 32, as training's evaluation does."""
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(1 / scale)
    mean = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / std)
