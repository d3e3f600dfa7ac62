"""Decoding an uploaded image, with the checks that keep a bad upload a 4xx.

The header is read before any pixel is decoded, so a decompression bomb (a few KiB of PNG that
claim 100k x 100k pixels) is refused by its declared size, not after it has taken the memory.
Decoding is OpenCV's ``imdecode`` (it releases the GIL), to BGR ``uint8`` as the PP-OCR models
were trained on.
"""

from __future__ import annotations

import base64
import binascii
import struct

import numpy as np

from ..errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
# JPEG start-of-frame markers (baseline, extended, progressive, lossless, ...): they hold the size.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_OTHER_FORMATS = {b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"RIFF": "WebP/RIFF"}


def _jpeg_size(data: bytes | bytearray) -> tuple[int, int]:
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise BadRequest("JPEG image is corrupt: no marker where one was expected")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if marker in _SOF:
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        if marker == 0xD9 or length < 2:
            break
        i += 2 + length
    raise BadRequest("JPEG image is truncated or corrupt: no frame header (SOF) with its size")


def probe(data: bytes | bytearray) -> tuple[str, int, int]:
    """(format, width, height) from the header alone; raises a 4xx error naming the problem."""
    if not data:
        raise BadRequest("empty body: send the PNG or JPEG bytes of an image")
    if data.startswith(PNG_MAGIC):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise BadRequest("PNG image is truncated or corrupt: no IHDR header")
        w, h = struct.unpack(">II", data[16:24])
        return "png", w, h
    if data.startswith(JPEG_MAGIC):
        w, h = _jpeg_size(data)
        return "jpeg", w, h
    for magic, name in _OTHER_FORMATS.items():
        if data.startswith(magic):
            raise UnsupportedMediaType(f"unsupported image format {name}: send PNG or JPEG")
    raise UnsupportedMediaType("body is not a PNG or JPEG image (unrecognised header)")


def unwrap_base64(data: bytes | bytearray) -> bytes | bytearray:
    """The image inside base64 text, else ``data`` itself.

    OIP v2 JSON carries a BYTES element as a string, so an image sent in JSON is base64 of its bytes;
    raw uploads start with the PNG/JPEG magic and are returned at once.
    """
    if data.startswith((PNG_MAGIC, JPEG_MAGIC)):
        return data
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return data
    return raw if raw.startswith((PNG_MAGIC, JPEG_MAGIC)) else data


def decode(data: bytes | bytearray, *, max_bytes: int, max_pixels: int) -> np.ndarray:
    """BGR ``uint8`` array of shape (H, W, 3) from PNG or JPEG bytes, after the size checks."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes, over the {max_bytes}-byte limit (ocr_max_image_bytes)")
    fmt, w, h = probe(data)
    if w == 0 or h == 0:
        raise BadRequest(f"{fmt.upper()} image is zero-sized ({w}x{h})")
    if w * h > max_pixels:
        raise PayloadTooLarge(f"{fmt.upper()} image is {w}x{h} = {w * h} pixels, over the {max_pixels}-pixel "
                              "limit (ocr_max_image_pixels)")
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise BadRequest(f"{fmt.upper()} image ({w}x{h}) cannot be decoded: the data is truncated or corrupt")
    return img
