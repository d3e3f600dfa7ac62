"""The PP-OCR processing steps and the image checks, on arrays and bytes built here."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from paddle_runtime.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from paddle_runtime.ocr import image, processing


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), "white").save(buf, "JPEG")
    return buf.getvalue()


def test_probe_reads_the_size_from_png_and_jpeg_headers():
    buf = io.BytesIO()
    Image.new("RGB", (123, 45), "white").save(buf, "PNG")
    assert image.probe(buf.getvalue()) == ("png", 123, 45)
    assert image.probe(_jpeg(77, 31)) == ("jpeg", 77, 31)


def test_decode_refuses_an_image_over_the_byte_limit_before_reading_it():
    with pytest.raises(PayloadTooLarge, match="over the 100-byte limit"):
        image.decode(_jpeg(64, 64), max_bytes=100, max_pixels=10**9)


def test_decode_refuses_by_declared_pixels_and_unknown_formats():
    with pytest.raises(PayloadTooLarge, match="4096 pixels"):
        image.decode(_jpeg(64, 64) + b"", max_bytes=10**6, max_pixels=4000)
    with pytest.raises(UnsupportedMediaType, match="BMP"):
        image.decode(b"BM" + b"\0" * 60, max_bytes=10**6, max_pixels=10**6)
    with pytest.raises(BadRequest, match="no IHDR"):
        image.decode(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IEND", max_bytes=10**6, max_pixels=10**6)


def test_decode_gives_bgr_pixels():
    buf = io.BytesIO()
    Image.new("RGB", (4, 2), (255, 0, 0)).save(buf, "PNG")
    img = image.decode(buf.getvalue(), max_bytes=10**6, max_pixels=10**6)
    assert img.shape == (2, 4, 3) and img[0, 0].tolist() == [0, 0, 255]


def test_ctc_decode_drops_blanks_and_repeats_and_averages_kept_probabilities():
    chars = ["blank", "a", "b", " "]
    steps = [1, 1, 0, 1, 2, 2, 3, 0]
    probs = np.full((1, len(steps), 4), 0.1, dtype=np.float32)
    for t, c in enumerate(steps):
        probs[0, t, c] = 0.5 + t / 100
    ((text, score),) = processing.ctc_decode(probs, chars)
    assert text == "aab "
    assert score == pytest.approx(np.mean([0.5, 0.53, 0.54, 0.56]))


def test_boxes_sort_top_to_bottom_then_left_to_right_within_a_line():
    def box(x: float, y: float) -> np.ndarray:
        return np.array([[x, y], [x + 50, y], [x + 50, y + 20], [x, y + 20]], dtype=np.float32)

    right_high, left_low, next_line = box(300, 100), box(10, 105), box(10, 160)
    out = processing.sort_boxes([next_line, right_high, left_low])
    assert [b[0].tolist() for b in out] == [[10, 105], [300, 100], [10, 160]]


def test_rec_plan_keeps_paddleocr_groups_by_default_and_regroups_by_bucket_when_asked():
    crops = [np.zeros((48, w, 3), np.uint8) for w in (100, 700, 330, 650, 90, 400, 1000)]
    exact = processing.rec_plan(crops)
    assert [len(idx) for idx, _, _ in exact] == [6, 1]
    (idx, widths, padded), _ = exact
    assert padded == 700 and widths[idx.index(1)] == 700 and widths[idx.index(0)] == 100
    buckets = processing.rec_plan(crops, step=160)
    assert [(w, sorted(idx)) for idx, _, w in buckets] == [(320, [0, 4]), (480, [2, 5]), (800, [1, 3]), (1120, [6])]
    assert sorted(i for idx, _, _ in buckets for i in idx) == list(range(7))


def test_unclip_grows_a_box_by_area_times_ratio_over_perimeter():
    pred = np.zeros((1, 1, 100, 200), np.float32)
    pred[0, 0, 40:60, 50:150] = 0.9
    (box,) = processing.db_boxes(pred, 100, 200)
    xs, ys = box[:, 0], box[:, 1]
    # 100 x 20 region: distance = 2000 * 1.6 / 240 = 13.3 px on each side.
    assert 33 <= xs.min() <= 38 and 162 <= xs.max() <= 166 and 25 <= ys.min() <= 28 and 72 <= ys.max() <= 75
