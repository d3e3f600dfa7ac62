"""Test images rendered here, with their ground truth: what the OCR accuracy tests and the benchmark read.

Text is drawn with WenQuanYi Micro Hei (Debian ``fonts-wqy-microhei``, installed by ``make system-deps``),
which covers Chinese, Latin and digits. Each case is a PNG (or JPEG) plus the expected lines in
reading order.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_PATHS = (Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),)


def font_path() -> Path:
    for p in FONT_PATHS:
        if p.is_file():
            return p
    raise FileNotFoundError("the CJK test font is missing: run `make system-deps` (Debian fonts-wqy-microhei)")


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path()), size)


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    truth: tuple[str, ...]
    """Expected lines (or cells), in reading order."""


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _line(text: str, size: int, pad: int = 6) -> Image.Image:
    f = _font(size)
    left, top, right, bottom = f.getbbox(text)
    img = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), "white")
    ImageDraw.Draw(img).text((pad - left, pad - top), text, fill="black", font=f)
    return img


def lines_image(lines: list[str], *, size: int = 32, margin: int = 30, gap: int = 22,
                rotate: set[int] = frozenset(), width: int | None = None) -> Image.Image:
    """Lines stacked top to bottom, left-aligned; lines whose index is in ``rotate`` are upside down."""
    parts = [_line(t, size) for t in lines]
    parts = [p.rotate(180) if i in rotate else p for i, p in enumerate(parts)]
    w = width or max(p.width for p in parts) + 2 * margin
    h = sum(p.height for p in parts) + gap * (len(parts) - 1) + 2 * margin
    img = Image.new("RGB", (w, h), "white")
    y = margin
    for p in parts:
        img.paste(p, (margin, y))
        y += p.height + gap
    return img


def receipt_image() -> tuple[Image.Image, tuple[str, ...]]:
    """A till receipt: centred title, items with right-aligned prices, total."""
    rows = [("超市购物小票", None), ("No. 20261202-0042", None), ("牛奶 Milk", "12.50"),
            ("面包 Bread", "8.00"), ("Apple x3", "15.90"), ("合计 Total", "36.40")]
    w, size, margin, gap = 560, 28, 30, 20
    img = Image.new("RGB", (w, 60 + len(rows) * (size + gap) + margin), "white")
    y = margin
    truth = []
    for left, right in rows:
        a = _line(left, size)
        x = (w - a.width) // 2 if right is None else margin
        img.paste(a, (x, y))
        truth.append(left)
        if right is not None:
            b = _line(right, size)
            img.paste(b, (w - margin - b.width, y))
            truth.append(right)
        y += a.height + gap
    return img, tuple(truth)


def noisy(img: Image.Image, sigma: float = 18.0, seed: int = 7) -> Image.Image:
    """Gaussian pixel noise and a slight blur, like a poor scan."""
    a = np.asarray(img.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)
    a += np.random.default_rng(seed).normal(0, sigma, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def cases() -> list[Case]:
    """Every accuracy case."""
    single = ["Invoice INV-2026-0042"]
    several = ["PaddleSLA serves OCR", "Total due: 1234.56", "Account 6222 0210 8899"]
    mixed = ["发票号码 No.88231045", "开户银行 中国银行 Bank of China", "金额 ¥2,980.00 元"]
    flipped = ["Flipped receipt No.4417", "正面朝上 ABC", "倒置的文字 2026"]
    rimg, rtruth = receipt_image()
    noise_lines = ["Noisy scan 7391", "噪声扫描 测试 58"]
    return [
        Case("single-line", _encode(lines_image(single)), tuple(single)),
        Case("several-lines", _encode(lines_image(several)), tuple(several)),
        Case("mixed-cjk-latin-digits", _encode(lines_image(mixed)), tuple(mixed)),
        Case("rotated-180", _encode(lines_image(flipped, rotate={0, 2})), tuple(flipped)),
        Case("receipt", _encode(rimg), rtruth),
        Case("noise", _encode(noisy(lines_image(noise_lines))), tuple(noise_lines)),
        Case("jpeg", _encode(lines_image(several), "JPEG"), tuple(several)),
    ]
