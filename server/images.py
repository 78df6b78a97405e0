"""Uploaded bytes -> 32x32 RGB uint8, safely (Pillow), and the manifest's normalisation.

Any common format (PNG, JPEG, BMP, WebP, GIF: first frame, ...) is opened with Pillow, checked
against the pixel cap before decoding, fully decoded (so truncated files fail here), converted to
RGB (transparency composited on black, as convert("RGB") does) and resized to 32x32 with
bilinear filtering (Pillow's antialiased resize) when it is not 32x32 already.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

SIZE = (32, 32)


class ImageError(ValueError):
    """A bad upload; status is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> np.ndarray:
    if not data:
        raise ImageError(400, "empty file: the upload has zero bytes")
    if len(data) > max_bytes:
        raise ImageError(413, f"file too large: {len(data)} bytes > limit of {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(413, f"image too large: {width}x{height} = {width * height} pixels > "
                                      f"limit of {max_pixels} (decompression bomb?)")
            image.load()
            image = image.convert("RGB")
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(413, f"image too large (decompression bomb): {exc}") from None
    except UnidentifiedImageError:
        raise ImageError(415, "not an image: the file is in no format Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated / corrupt data
        raise ImageError(400, f"corrupt or truncated image: {exc}") from None
    if image.size != SIZE:
        image = image.resize(SIZE, Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def normalize(images: np.ndarray, mean, std, scale: float) -> np.ndarray:
    """uint8 N x 32 x 32 x 3 -> float32 N x 3 x 32 x 32, as training's evaluation does."""
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(1 / scale)
    mean = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((x - mean) / std)
