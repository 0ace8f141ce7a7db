"""Deterministic, fast PNG images: a seeded two-colour gradient with the prompt drawn on top.

The image is a palette PNG. Pixel indices depend only on the size and the text; the colours
live in the PLTE chunk. The rows below the text band are the same for every image of a size,
so their deflate blocks are compressed once and cached; per image only the small text band is
compressed and the zlib stream is stitched (raw deflate blocks + adler32 of the whole data).
With Pillow installed the prompt is drawn into the band; without it the band is plain gradient.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import zlib
from collections import OrderedDict
from typing import Any

try:  # Pillow is optional (the ``images`` extra).
    from PIL import Image, ImageDraw, ImageFont

    HAVE_PILLOW = True
except ImportError:  # pragma: no cover - exercised only without Pillow
    HAVE_PILLOW = False

__all__ = ["HAVE_PILLOW", "PngCache", "render_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_STEPS = 64  # gradient palette entries 0..63
_TEXT_INDEX = _STEPS  # palette entry of the text colour
_LEVEL = 6


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _row_index(y: int, height: int) -> int:
    return (y * _STEPS) // height


def _adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """adler32 of ``a + b`` from adler32(a), adler32(b) and len(b) (zlib's adler32_combine)."""
    base = 65521
    rem = len2 % base
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % base
    sum1 += (adler2 & 0xFFFF) + base - 1
    sum2 += ((adler1 >> 16) & 0xFFFF) + ((adler2 >> 16) & 0xFFFF) + base - rem
    if sum1 >= base:
        sum1 -= base
    if sum1 >= base:
        sum1 -= base
    if sum2 >= base << 1:
        sum2 -= base << 1
    if sum2 >= base:
        sum2 -= base
    return sum1 | (sum2 << 16)


def _plain_rows(width: int, height: int, first: int, last: int) -> bytes:
    """Filtered gradient rows ``first..last-1`` (filter byte 0 + palette index per pixel)."""
    return b"".join(b"\x00" + bytes((_row_index(y, height),)) * width for y in range(first, last))


@functools.lru_cache(maxsize=16)
def _rest(width: int, height: int, band: int) -> tuple[bytes, int, int]:
    """Final raw-deflate blocks of the gradient rows ``band..height-1``.

    Returns ``(deflate_bytes, raw_length, adler32_of_raw)``; cached per size.
    """
    raw = _plain_rows(width, height, band, height)
    comp = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15)
    data = comp.compress(raw) + comp.flush(zlib.Z_FINISH)
    return data, len(raw), zlib.adler32(raw)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old Pillow or no FreeType
        return ImageFont.load_default()


def _band_height(width: int, height: int) -> tuple[int, int]:
    """(font size, band rows) for an image, or (0, 0) when it is too small for text."""
    size = max(8, min(32, width // 32))
    band = 2 * size + 3 * max(2, size // 4)
    if width < 48 or height < band + 4:
        return 0, 0
    return size, band


def _fit(text: str, font: Any, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if font.getlength(text[:mid] + "...") <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "..."


def _band_rows(width: int, height: int, band: int, size: int, prompt: str, index: int) -> bytes:
    """Filtered rows 0..band-1 (filter byte 0 + palette indices) with the prompt drawn."""
    background = b"".join(bytes((_row_index(y, height),)) * width for y in range(band))
    img = Image.frombytes("P", (width, band), background)
    draw = ImageDraw.Draw(img)
    font = _font(size)
    pad = max(2, size // 4)
    line1 = _fit(" ".join(prompt.split()) or "(empty prompt)", font, width - 2 * pad)
    draw.text((pad, pad), line1, fill=_TEXT_INDEX, font=font)
    draw.text((pad, 2 * pad + size), f"#{index}", fill=_TEXT_INDEX, font=font)
    pixels = img.tobytes()
    return b"".join(b"\x00" + pixels[y * width : (y + 1) * width] for y in range(band))


def _palette(seed: int, prompt: str, index: int) -> bytes:
    h = hashlib.blake2b(f"{seed}\x00{prompt}\x00{index}".encode(), digest_size=6).digest()
    top, bottom = h[:3], h[3:]
    pal = bytearray()
    for i in range(_STEPS):
        for c in range(3):
            pal.append(top[c] + (bottom[c] - top[c]) * i // (_STEPS - 1))
    mid = [(top[c] + bottom[c]) // 2 for c in range(3)]
    luminance = 0.299 * mid[0] + 0.587 * mid[1] + 0.114 * mid[2]
    pal += b"\x00\x00\x00" if luminance > 140 else b"\xff\xff\xff"
    return bytes(pal)


@functools.lru_cache(maxsize=256)
def _head(
    width: int, height: int, band: int, size: int, prompt: str, index: int
) -> tuple[bytes, int]:
    """Sync-flushed raw-deflate blocks of the text band and the band's adler32.

    The band depends on the size, prompt and index but not on the seed (colours are in PLTE),
    so jobs that repeat a prompt share it.
    """
    head = _band_rows(width, height, band, size, prompt, index)
    comp = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15)
    return comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH), zlib.adler32(head)


def render_png(
    width: int, height: int, seed: int, prompt: str, index: int, draw_prompt: bool = True
) -> bytes:
    """A valid ``width`` x ``height`` PNG, identical bytes for identical arguments."""
    size, band = _band_height(width, height) if draw_prompt and HAVE_PILLOW else (0, 0)
    rest, rest_len, rest_adler = _rest(width, height, band)
    if band:
        head_deflate, head_adler = _head(width, height, band, size, prompt, index)
        adler = _adler32_combine(head_adler, rest_adler, rest_len)
    else:
        head_deflate, adler = b"", rest_adler
    idat = b"\x78\x9c" + head_deflate + rest + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    return (
        _SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"PLTE", _palette(seed, prompt, index))
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


class PngCache:
    """A small LRU of rendered PNG bytes keyed by ``(seed, prompt, width, height, index)``."""

    def __init__(self, maxsize: int = 128, draw_prompt: bool = True) -> None:
        self._maxsize = maxsize
        self._draw = draw_prompt
        self._items: OrderedDict[tuple[int, str, int, int, int], bytes] = OrderedDict()

    def get(self, seed: int, prompt: str, width: int, height: int, index: int) -> bytes:
        """The PNG for these parameters, rendered on a miss."""
        key = (seed, prompt, width, height, index)
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
            return data
        data = render_png(width, height, seed, prompt, index, self._draw)
        self._items[key] = data
        if len(self._items) > self._maxsize:
            self._items.popitem(last=False)
        return data

    def clear(self) -> None:
        """Drop every cached image."""
        self._items.clear()
