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
_RAMP = range(_STEPS)
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


@functools.lru_cache(maxsize=1)
def _font() -> Any:
    """Pillow's built-in bitmap font: ~20x faster to draw than FreeType; scaled up as needed."""
    loader = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)
    return loader()


_GLYPH_H = 12  # line height of the bitmap font
_GLYPH_W = 6  # its glyph advance


def _band_height(width: int, height: int) -> tuple[int, int]:
    """(text scale, band rows) for an image, or (0, 0) when it is too small for text."""
    scale = max(1, min(4, width // 256))
    band = (_GLYPH_H + 4) * scale
    if width < 48 or height < band + 4:
        return 0, 0
    return scale, band


@functools.lru_cache(maxsize=16)
def _band_background(width: int, height: int, band: int) -> bytes:
    """Band rows as a (width + 1)-pixel-wide image whose column 0 is the PNG filter byte 0."""
    return b"".join(b"\x00" + bytes((_row_index(y, height),)) * width for y in range(band))


def _band_rows(width: int, height: int, band: int, scale: int, prompt: str, index: int) -> bytes:
    """Filtered rows 0..band-1 (filter byte 0 + palette indices) with the prompt drawn.

    The band is drawn one pixel wider than the image; its first column (palette index 0)
    doubles as each row's filter byte, so the pixels need no re-slicing. The text is drawn
    with the bitmap font at 1x and scaled up (nearest) by ``scale``; what does not fit is cut.
    """
    img = Image.frombytes("P", (width + 1, band), _band_background(width, height, band))
    pad = 2 * scale
    room = (width - 2 * pad) // scale
    text = f"#{index} " + (" ".join(prompt.split()) or "(empty prompt)")
    max_chars = max(1, room // _GLYPH_W)
    if len(text) > max_chars:
        text = text[: max_chars - 3] + "..."
    mask = Image.new("1", (room, _GLYPH_H))
    ImageDraw.Draw(mask).text((0, 0), text, fill=1, font=_font())
    if scale > 1:
        mask = mask.resize((room * scale, _GLYPH_H * scale), Image.Resampling.NEAREST)
    img.paste(_TEXT_INDEX, (1 + pad, pad), mask)
    return img.tobytes()


def _palette(seed: int, prompt: str, index: int) -> bytes:
    h = hashlib.blake2b(f"{seed}\x00{prompt}\x00{index}".encode(), digest_size=6).digest()
    last = _STEPS - 1
    pal = bytearray(3 * _STEPS + 3)
    for c in range(3):
        top, bottom = h[c], h[3 + c]
        pal[c : 3 * _STEPS : 3] = bytes([(top * (last - i) + bottom * i) // last for i in _RAMP])
    luminance = 0.299 * (h[0] + h[3]) + 0.587 * (h[1] + h[4]) + 0.114 * (h[2] + h[5])
    pal[3 * _STEPS :] = b"\x00\x00\x00" if luminance > 280 else b"\xff\xff\xff"
    return bytes(pal)


@functools.lru_cache(maxsize=256)
def _head(
    width: int, height: int, band: int, scale: int, prompt: str, index: int
) -> tuple[bytes, int]:
    """Sync-flushed raw-deflate blocks of the text band and the band's adler32.

    The band depends on the size, prompt and index but not on the seed (colours are in PLTE),
    so jobs that repeat a prompt share it.
    """
    head = _band_rows(width, height, band, scale, prompt, index)
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)  # per image: fast beats small
    return comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH), zlib.adler32(head)


def render_png(
    width: int, height: int, seed: int, prompt: str, index: int, draw_prompt: bool = True
) -> bytes:
    """A valid ``width`` x ``height`` PNG, identical bytes for identical arguments."""
    scale, band = _band_height(width, height) if draw_prompt and HAVE_PILLOW else (0, 0)
    rest, rest_len, rest_adler = _rest(width, height, band)
    if band:
        head_deflate, head_adler = _head(width, height, band, scale, prompt, index)
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
