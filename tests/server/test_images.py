import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from server.images import DRAFT_SIZE, SIZE, DecodePool, ImageError, PixelBudget, decode_image, normalize

MAX_BYTES, MAX_PIXELS = 1 << 20, 4_000_000


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def decode(data, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS):
    return decode_image(data, max_bytes, max_pixels)


def test_cifar_png_round_trips_exactly(cifar):
    image = cifar[1].images[0]
    np.testing.assert_array_equal(decode(encode(Image.fromarray(image), "PNG")), image)


@pytest.mark.parametrize(
    "fmt,mode",
    [
        ("PNG", "RGBA"),
        ("PNG", "L"),
        ("PNG", "P"),
        ("JPEG", "RGB"),
        ("BMP", "RGB"),
        ("WEBP", "RGB"),
        ("GIF", "P"),
        ("TIFF", "RGB"),
        ("PNG", "I;16"),
    ],
)
def test_common_formats_and_modes_become_rgb_32(fmt, mode):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).convert(mode)
    out = decode(encode(image, fmt))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_large_image_is_resized_bilinear():
    image = Image.new("RGB", (1000, 800), (200, 10, 30))
    out = decode(encode(image, "PNG"))
    assert out.shape == (32, 32, 3) and (out == [200, 10, 30]).all()


@pytest.mark.parametrize(
    "data,status,message",
    [
        (b"", 400, "empty file"),
        (b"hello, not an image", 415, "not an image"),
        (b"x" * (MAX_BYTES + 1), 413, "file too large"),
    ],
)
def test_bad_bytes(data, status, message):
    with pytest.raises(ImageError, match=message) as info:
        decode(data)
    assert info.value.status == status


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_400(fmt):
    data = encode(Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)), fmt)
    with pytest.raises(ImageError, match="corrupt or truncated") as info:
        decode(data[: len(data) // 2])
    assert info.value.status == 400


def test_decompression_bomb_is_413_before_decoding():
    bomb = encode(Image.new("1", (30000, 30000)), "PNG")  # 900 Mpixel, a few hundred kB
    assert len(bomb) < MAX_BYTES
    with pytest.raises(ImageError, match="decompression bomb") as info:
        decode(bomb)
    assert info.value.status == 413


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_never_escape_as_other_errors(data):
    try:
        out = decode(data)
    except ImageError as exc:
        assert exc.status in (400, 413, 415)
    else:
        assert out.shape == (32, 32, 3)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(0, 2000))
def test_mutated_png_never_escapes(noise, offset):
    data = bytearray(encode(Image.new("RGB", (40, 40), (1, 2, 3)), "PNG"))
    offset = offset % len(data)
    data[offset : offset + len(noise)] = noise
    try:
        decode(bytes(data))
    except ImageError as exc:
        assert exc.status in (400, 413, 415)


def test_large_jpeg_decodes_in_draft_mode_to_the_same_picture():
    """A 2400x1600 photo-like JPEG: libjpeg's reduced-scale decode gives the 32x32 input within a
    few grey levels of a full decode + resize."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 255, (12, 18, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((2400, 1600), Image.Resampling.BICUBIC)
    data = encode(image, "JPEG", quality=90)
    drafted = Image.open(io.BytesIO(data))
    drafted.draft("RGB", DRAFT_SIZE)
    assert drafted.size == (300, 200)  # 1/8 scale, still >= DRAFT_SIZE on each side
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize(SIZE, Image.Resampling.BILINEAR), np.int16)
    out = decode(data, max_pixels=4_000_000).astype(np.int16)
    assert np.abs(out - full).mean() < 3 and np.abs(out - full).max() < 24


def test_pixel_budget_bounds_what_decodes_at_once():
    """Eight 2000x2000 PNGs through four decode threads under a one-image budget: never more than
    one image's pixels in flight, and every image decoded right."""
    import asyncio

    colours = [(i * 30, 255 - i * 30, 7) for i in range(8)]
    files = [io.BytesIO(encode(Image.new("RGB", (2000, 2000), c), "PNG")) for c in colours]
    pool = DecodePool(workers=4, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, budget_pixels=4_000_000)
    lowest = [pool.budget.free]
    original = pool.budget.acquire

    def watched(pixels):
        taken = original(pixels)
        lowest.append(pool.budget.free)
        return taken

    pool.budget.acquire = watched

    async def run():
        return await asyncio.gather(*(pool.decode(f) for f in files))

    try:
        outs = asyncio.run(run())
    finally:
        pool.shutdown()
    assert [tuple(o[0, 0]) for o in outs] == colours
    assert min(lowest) == 0 and pool.budget.free == 4_000_000  # one whole image at a time, all returned
    budget = PixelBudget(100)
    assert budget.acquire(10_000) == 100 and budget.free == 0  # larger than the budget: waits for all of it
    budget.release(100)


def test_small_uploads_decode_on_the_event_loop_and_the_others_in_the_pool(cifar):
    """With its threads shut down, the pool still decodes a CIFAR-sized PNG held in memory (on the
    loop, as the same picture), but not a 100x100 one of few bytes nor an upload from a file."""
    import asyncio

    pool = DecodePool(workers=1, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, budget_pixels=MAX_PIXELS)
    pool.shutdown()
    small = encode(Image.fromarray(cifar[1].images[7]), "PNG")
    larger = encode(Image.new("RGB", (100, 100), (3, 4, 5)), "PNG")
    assert len(larger) < len(small)  # it is the pixels that count, not the bytes

    async def decode_each():
        out = [await pool.decode(small)]
        for upload in (larger, io.BytesIO(small)):
            with pytest.raises(RuntimeError, match="after shutdown"):
                await pool.decode(upload)
        with pytest.raises(ImageError, match="empty file"):  # bad input answered there too
            await pool.decode(b"")
        return out

    (image,) = asyncio.run(decode_each())
    np.testing.assert_array_equal(image, cifar[1].images[7])


def test_normalize_matches_training(cifar):
    torch = pytest.importorskip("torch")
    from training.augment import normalize_batch
    from training.constants import MEAN, STD

    images = cifar[1].images[:16]
    np.testing.assert_allclose(normalize(images, MEAN, STD, 1 / 255), normalize_batch(images).numpy(), atol=1e-6)
    assert torch  # the server itself never imports torch (test_no_torch.py)
