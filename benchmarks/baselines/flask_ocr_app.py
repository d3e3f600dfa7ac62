"""Seed-style OCR baseline: Flask under gunicorn wrapping rapidocr-paddle's pipeline, one per worker.

POST /ocr with the raw image bytes; answers JSON ``{"results": [{"text", "score", "box"}]}``.
Run: ``gunicorn -w 2 flask_ocr_app:app`` (in a venv with flask, gunicorn and rapidocr-paddle==1.4.5).
"""

from __future__ import annotations

from flask import Flask, jsonify, request

app = Flask(__name__)
_engine = None  # created lazily in each worker: predictors must not cross fork()


@app.post("/ocr")
def ocr():
    global _engine
    if _engine is None:
        from rapidocr_paddle import RapidOCR

        _engine = RapidOCR()
    res, _ = _engine(request.get_data())
    return jsonify({"results": [{"text": t, "score": float(s), "box": b} for b, t, s in (res or [])]})


@app.get("/ready")
def ready() -> str:
    return "ok"
