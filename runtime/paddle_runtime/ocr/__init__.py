"""PP-OCR as one served pipeline: an encoded image in, boxes and text out (det -> cls -> rec).

``image`` decodes and checks the upload, ``processing`` holds the PP-OCR pre/post-processing (the
algorithms PaddleOCR and rapidocr use, written here), ``pipeline`` chains the three stage batchers,
``routes`` adds the HTTP routes and ``serve`` assembles it for ``paddle-runtime serve --pipeline ppocr``.
"""
