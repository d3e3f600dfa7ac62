"""Baseline (d): the KServe Python model server with a minimal ``kserve.Model`` over the same predictor.

Serves OIP v2 (``/v2/models/bench/infer``, binary tensors accepted and returned).
Run: ``BENCH_MODEL_DIR=... python kserve_app.py --http_port 8080 --workers 1``.
"""

from __future__ import annotations

import os

import kserve
from common import make_predictor
from kserve import InferOutput, InferRequest, InferResponse


class PaddleModel(kserve.Model):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.pred = None
        self.ready = False

    def load(self) -> bool:
        self.pred = make_predictor(os.environ["BENCH_MODEL_DIR"])
        self.in_name = self.pred.get_input_names()[0]
        self.out_name = self.pred.get_output_names()[0]
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers: dict | None = None, response_headers: dict | None = None) -> InferResponse:
        x = payload.inputs[0].as_numpy()
        self.pred.get_input_handle(self.in_name).copy_from_cpu(x)
        self.pred.run()
        out = self.pred.get_output_handle(self.out_name).copy_to_cpu()
        o = InferOutput(name=self.out_name, shape=list(out.shape), datatype="FP32")
        o.set_data_from_numpy(out, binary_data=True)
        return InferResponse(model_name=self.name, infer_outputs=[o], response_id=payload.id or "1",
                             use_binary_outputs=True)


if __name__ == "__main__":
    m = PaddleModel("bench")
    m.load()
    kserve.ModelServer(enable_grpc=False).start([m])
