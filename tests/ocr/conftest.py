"""Fixtures for the OCR pipeline tests: a real ``paddle-runtime serve --pipeline ppocr`` and the reference.

The reference is rapidocr-paddle 1.4.5's own pipeline (``RapidOCR()``, its default configuration) over
the same bundled models; the server is started once per module.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .render import Case, cases, font_path


@pytest.fixture(scope="session")
def ocr_cases() -> list[Case]:
    try:
        font_path()
    except FileNotFoundError as e:
        pytest.fail(str(e))
    return cases()


@pytest.fixture(scope="session")
def rapidocr_reference() -> Callable[[bytes], list[tuple[str, float, list]]]:
    from rapidocr_paddle import RapidOCR

    engine = RapidOCR()

    def run(data: bytes) -> list[tuple[str, float, list]]:
        res, _ = engine(data)
        return [(text, float(score), box) for box, text, score in (res or [])]

    return run


@pytest.fixture(scope="module")
def ocr_server(runtime_launcher: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # --model-dir "" : the pipeline's stage models replace it (defaults: the bundled PP-OCR models).
    rp = runtime_launcher("", "--pipeline", "ppocr", "--max-batch-size", "8", timeout=180,
                          log_dir=tmp_path_factory.mktemp("ocr-server"))
    yield rp
    rp.stop()


def post(url: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, Any]:
    """POST ``body``; (status, parsed JSON body)."""
    req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
