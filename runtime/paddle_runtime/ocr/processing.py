"""PP-OCR pre- and post-processing: the steps between the three models, as pure numpy/OpenCV functions.

The algorithms are PaddleOCR's (and rapidocr-paddle 1.4.5's, whose defaults are used), written
here so the runtime owns them:

* image fitting: longest side <= ``max_side``, shortest >= ``min_side`` (both snapped to 32), and a
  black letterbox above and below a very short or very wide image;
* detection input: resize so the ``limit_type`` side meets ``limit_side_len`` (multiples of 32),
  scale to [-1, 1], CHW;
* DB post-processing: threshold the probability map, dilate 2x2, contours, minimum-area rectangles,
  mean score inside each box, unclip (polygon offset by area * ratio / perimeter, pyclipper), again
  the minimum rectangle, scale back to the image;
* boxes ordered clockwise from top-left, clipped, tiny ones dropped, sorted top-to-bottom then
  left-to-right within a 10-pixel line;
* perspective crop of each box (a crop 1.5x taller than wide is turned 90 degrees);
* direction classifier input 3x48x192; a crop classified "180" above ``cls_thresh`` is rotated;
* recognition input 3x48xW: resized to height 48 keeping the aspect ratio (PaddleOCR's rounding),
  zero-padded on the right as PaddleOCR pads (``rec_plan`` step 0), or to a width bucket so similar
  crops of concurrent requests batch together (step > 0);
* greedy CTC decoding (blank first, space last in the character list), score = mean probability.

Every function takes and returns arrays; nothing here knows about Paddle or HTTP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyclipper


@dataclass(frozen=True)
class Fitted:
    """The image the detector and the crops use, and how to map its coordinates back."""

    image: np.ndarray
    ratio_h: float
    ratio_w: float
    top: int
    """Letterbox rows added above the (resized) image."""


def _resize32(img: np.ndarray, ratio: float) -> tuple[np.ndarray, float, float]:
    h, w = img.shape[:2]
    rh = int(round(int(h * ratio) / 32) * 32)
    rw = int(round(int(w * ratio) / 32) * 32)
    if rh <= 0 or rw <= 0:
        raise ValueError(f"image of {w}x{h} cannot be resized by {ratio:.3f}")
    return cv2.resize(img, (rw, rh)), h / rh, w / rw


def fit_image(img: np.ndarray, *, max_side: int = 2000, min_side: int = 30, min_height: int = 30,
              width_height_ratio: float = 8.0) -> Fitted:
    """Shrink an overlong image, enlarge a tiny one, letterbox a flat one (rapidocr's ``preprocess``)."""
    ratio_h = ratio_w = 1.0
    h, w = img.shape[:2]
    if max(h, w) > max_side:
        img, ratio_h, ratio_w = _resize32(img, max_side / max(h, w))
    h, w = img.shape[:2]
    if min(h, w) < min_side:
        img, ratio_h, ratio_w = _resize32(img, min_side / min(h, w))
    h, w = img.shape[:2]
    top = 0
    if h <= min_height or (width_height_ratio > 0 and w / h > width_height_ratio):
        new_h = max(int(w / width_height_ratio), min_height) * 2 if width_height_ratio > 0 else min_height * 2
        top = int(abs(new_h - h) / 2)
        img = cv2.copyMakeBorder(img, top, top, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return Fitted(img, ratio_h, ratio_w, top)


def det_input(img: np.ndarray, *, limit_side_len: int = 736, limit_type: str = "min") -> np.ndarray | None:
    """(1, 3, H, W) float32 detector input; None when the image is too small to resize."""
    h, w = img.shape[:2]
    if limit_type == "max":
        ratio = limit_side_len / max(h, w) if max(h, w) > limit_side_len else 1.0
    else:
        ratio = limit_side_len / min(h, w) if min(h, w) < limit_side_len else 1.0
    rh = int(round(int(h * ratio) / 32) * 32)
    rw = int(round(int(w * ratio) / 32) * 32)
    if rh <= 0 or rw <= 0:
        return None
    # (x / 255 - 0.5) / 0.5 and HWC -> NCHW in one pass (a 736x3000 image is 27 MB of float32).
    return np.asarray(cv2.dnn.blobFromImage(cv2.resize(img, (rw, rh)), scalefactor=2 / 255.0,
                                            mean=(127.5, 127.5, 127.5)), dtype=np.float32)


def _mini_box(contour: np.ndarray) -> tuple[np.ndarray, float]:
    rect = cv2.minAreaRect(contour)
    pts = sorted(list(cv2.boxPoints(rect)), key=lambda p: p[0])
    i1, i4 = (0, 1) if pts[1][1] > pts[0][1] else (1, 0)
    i2, i3 = (2, 3) if pts[3][1] > pts[2][1] else (3, 2)
    return np.array([pts[i1], pts[i2], pts[i3], pts[i4]]), min(rect[1])


def _box_score(pred: np.ndarray, box: np.ndarray) -> float:
    h, w = pred.shape[:2]
    b = box.copy()
    xmin = int(np.clip(np.floor(b[:, 0].min()), 0, w - 1))
    xmax = int(np.clip(np.ceil(b[:, 0].max()), 0, w - 1))
    ymin = int(np.clip(np.floor(b[:, 1].min()), 0, h - 1))
    ymax = int(np.clip(np.ceil(b[:, 1].max()), 0, h - 1))
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), dtype=np.uint8)
    b[:, 0] -= xmin
    b[:, 1] -= ymin
    cv2.fillPoly(mask, [b.reshape(-1, 2).astype(np.int32)], 1)
    return float(cv2.mean(pred[ymin:ymax + 1, xmin:xmax + 1], mask)[0])


def _unclip(box: np.ndarray, ratio: float) -> np.ndarray:
    x, y = box[:, 0].astype(np.float64), box[:, 1].astype(np.float64)
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    length = float(np.sum(np.hypot(np.roll(x, -1) - x, np.roll(y, -1) - y)))
    distance = area * ratio / length if length else 0.0
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(box, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return np.array(offset.Execute(distance)).reshape((-1, 1, 2))


def db_boxes(pred: np.ndarray, dest_h: int, dest_w: int, *, thresh: float = 0.3, box_thresh: float = 0.5,
             max_candidates: int = 1000, unclip_ratio: float = 1.6, dilate: bool = True,
             min_size: int = 3) -> list[np.ndarray]:
    """Text boxes (4x2 int32, in ``dest`` pixels) from a DB probability map of shape (1, 1, H, W)."""
    prob = pred[0, 0]
    mask = (prob > thresh).astype(np.uint8)
    if dilate:
        mask = cv2.dilate(mask, np.ones((2, 2), np.uint8))
    height, width = mask.shape
    contours, _ = cv2.findContours(mask * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    boxes = []
    for contour in contours[:max_candidates]:
        points, sside = _mini_box(contour)
        if sside < min_size:
            continue
        if _box_score(prob, points.reshape(-1, 2)) < box_thresh:
            continue
        expanded = _unclip(points, unclip_ratio)
        if expanded.size == 0:
            continue
        box, sside = _mini_box(expanded)
        if sside < min_size + 2:
            continue
        box[:, 0] = np.clip(np.round(box[:, 0] / width * dest_w), 0, dest_w)
        box[:, 1] = np.clip(np.round(box[:, 1] / height * dest_h), 0, dest_h)
        boxes.append(box.astype(np.int32))
    return boxes


def order_clockwise(pts: np.ndarray) -> np.ndarray:
    """Top-left, top-right, bottom-right, bottom-left (float32)."""
    xs = pts[np.argsort(pts[:, 0]), :]
    left, right = xs[:2], xs[2:]
    tl, bl = left[np.argsort(left[:, 1]), :]
    tr, br = right[np.argsort(right[:, 1]), :]
    return np.array([tl, tr, br, bl], dtype=np.float32)


def clean_boxes(boxes: list[np.ndarray], img_h: int, img_w: int) -> list[np.ndarray]:
    """Order, clip to the image and drop boxes 3 pixels or less across."""
    out = []
    for b in boxes:
        b = order_clockwise(b)
        b[:, 0] = np.floor(np.clip(b[:, 0], 0, img_w - 1))
        b[:, 1] = np.floor(np.clip(b[:, 1], 0, img_h - 1))
        if int(np.linalg.norm(b[0] - b[1])) <= 3 or int(np.linalg.norm(b[0] - b[3])) <= 3:
            continue
        out.append(b)
    return out


def sort_boxes(boxes: list[np.ndarray]) -> list[np.ndarray]:
    """Reading order: by top-left y then x, then left-to-right among boxes within 10 px vertically."""
    out = sorted(boxes, key=lambda b: (b[0][1], b[0][0]))
    for i in range(len(out) - 1):
        for j in range(i, -1, -1):
            if abs(out[j + 1][0][1] - out[j][0][1]) < 10 and out[j + 1][0][0] < out[j][0][0]:
                out[j], out[j + 1] = out[j + 1], out[j]
            else:
                break
    return out


def crop(img: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Perspective-rectified crop of ``box``; a tall crop (h/w >= 1.5) is turned 90 degrees."""
    pts = box.astype(np.float32)
    w = int(max(np.linalg.norm(pts[0] - pts[1]), np.linalg.norm(pts[2] - pts[3])))
    h = int(max(np.linalg.norm(pts[0] - pts[3]), np.linalg.norm(pts[1] - pts[2])))
    dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(pts, dst)
    out = cv2.warpPerspective(img, m, (w, h), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    if out.shape[0] / out.shape[1] >= 1.5:
        out = np.rot90(out)
    return out


def _resize_pad(img: np.ndarray, height: int, max_width: int, width: int) -> np.ndarray:
    h, w = img.shape[:2]
    rw = min(max_width, int(math.ceil(height * w / h)))
    x = cv2.resize(img, (rw, height)).astype(np.float32).transpose(2, 0, 1) / 255
    x -= 0.5
    x /= 0.5
    out = np.zeros((3, height, width), dtype=np.float32)
    out[:, :, :rw] = x
    return out


def cls_input(crop_img: np.ndarray, shape: tuple[int, int, int] = (3, 48, 192)) -> np.ndarray:
    """(3, 48, 192) direction-classifier input."""
    _, h, w = shape
    return _resize_pad(crop_img, h, w, w)


def rec_plan(crops: list[np.ndarray], *, height: int = 48, min_width: int = 320, group: int = 6,
             step: int = 0) -> list[tuple[list[int], list[int], int]]:
    """How the crops of one image go to the recogniser: [(crop indices, resized widths, padded width)].

    PaddleOCR sorts an image's crops by aspect ratio and runs them in groups of ``group``, padded to
    the group's widest, ``int(height * max_ratio)`` (at least ``min_width``); a crop is resized to
    ``ceil(height * ratio)`` capped by that, so a group's widest crop is rounded down.  The resized
    widths are always PaddleOCR's (one pixel can change a character).  With ``step`` 0 the groups
    and their padding are PaddleOCR's too, so the answers are identical to it (the recogniser's
    attention sees the padding); with ``step`` > 0 crops are regrouped by padded width, rounded up
    to a multiple of ``step``, so similar crops of one image and of concurrent requests share batches.
    """
    ratios = [c.shape[1] / c.shape[0] for c in crops]
    order = [int(i) for i in np.argsort(np.array(ratios))]
    groups: list[tuple[list[int], int]] = []
    widths = [0] * len(crops)
    for start in range(0, len(crops), group):
        idx = order[start:start + group]
        cap = int(height * max(min_width / height, *(ratios[i] for i in idx)))
        for i in idx:
            widths[i] = min(cap, int(math.ceil(height * ratios[i])))
        groups.append((idx, cap))
    if step <= 0:
        return [(idx, [widths[i] for i in idx], cap) for idx, cap in groups]
    buckets: dict[int, list[int]] = {}
    for i in order:
        buckets.setdefault(max(min_width, int(math.ceil(widths[i] / step) * step)), []).append(i)
    return [(idx, [widths[i] for i in idx], w) for w, idx in sorted(buckets.items())]


def rec_input(crop_img: np.ndarray, resized_width: int, width: int, height: int = 48) -> np.ndarray:
    """(3, 48, width) recognition input: the crop resized to ``resized_width``, left-aligned, zero-padded."""
    return _resize_pad(crop_img, height, resized_width, width)


def load_characters(path: str | Path) -> list[str]:
    """The CTC character list: blank, the dictionary's lines, then space."""
    lines = Path(path).read_bytes().decode("utf-8").splitlines()
    return ["blank", *lines, " "]


def ctc_decode(probs: np.ndarray, characters: list[str]) -> list[tuple[str, float]]:
    """Greedy CTC over (N, T, C) probabilities: (text, mean probability of the kept steps) per row."""
    idx = probs.argmax(axis=2)
    prob = probs.max(axis=2)
    out = []
    for i in range(idx.shape[0]):
        keep = np.ones(idx.shape[1], dtype=bool)
        keep[1:] = idx[i, 1:] != idx[i, :-1]
        keep &= idx[i] != 0
        text = "".join(characters[c] for c in idx[i][keep])
        confs = prob[i][keep]
        out.append((text, float(np.mean(confs)) if confs.size else 0.0))
    return out


def to_original(box: np.ndarray, fitted: Fitted, raw_h: int, raw_w: int) -> np.ndarray:
    """Map a box from the fitted image back to the uploaded image's pixels (float32, clipped)."""
    b = box.astype(np.float32).copy()
    b[:, 1] -= fitted.top
    b[:, 0] *= fitted.ratio_w
    b[:, 1] *= fitted.ratio_h
    b = np.maximum(b, 0)
    b[:, 0] = np.minimum(b[:, 0], raw_w)
    b[:, 1] = np.minimum(b[:, 1], raw_h)
    return b
