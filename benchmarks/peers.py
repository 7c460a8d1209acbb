"""What an engineer would write by hand to serve an ONNX model over the Open Inference
Protocol's v2 infer route, for ``device_agent.py`` to set the agent against: FastAPI with an
``async def`` route, FastAPI with a ``def`` route (run in its thread pool), and a bare
Starlette route; each on uvicorn's defaults (uvloop and httptools where installed, as
``uvicorn[standard]`` installs them), onnxruntime with one intra-op thread like the agent.

    .venv/bin/python benchmarks/peers.py {fastapi-async,fastapi-def,starlette} MODEL.onnx PORT

Each answers ``GET /v2/health/live`` and ``POST /v2/models/{name}/infer`` with the label and
probabilities of a classifier, as the agent does (a request id, the outputs' names, shapes
and datatypes).
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PEERS = ("fastapi-async", "fastapi-def", "starlette")


def session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[Tensor]


def answer(
    sess: ort.InferenceSession, name: str, tensor: str, X: np.ndarray[Any, Any], rid: str | None
) -> dict[str, Any]:
    label, probabilities = sess.run(None, {tensor: X})
    return {
        "model_name": name,
        "id": rid or uuid.uuid4().hex,
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [len(label)], "data": label.tolist()},
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": list(probabilities.shape),
                "data": probabilities.reshape(-1).tolist(),
            },
        ],
    }


def fastapi_app(sess: ort.InferenceSession, use_async: bool) -> FastAPI:
    app = FastAPI()

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    def run(name: str, request: InferRequest) -> dict[str, Any]:
        t = request.inputs[0]
        X = np.asarray(t.data, dtype=np.float32).reshape(t.shape)
        return answer(sess, name, t.name, X, request.id)

    if use_async:

        @app.post("/v2/models/{name}/infer")
        async def infer_async(name: str, request: InferRequest) -> dict[str, Any]:
            return run(name, request)

    else:

        @app.post("/v2/models/{name}/infer")
        def infer_def(name: str, request: InferRequest) -> dict[str, Any]:
            return run(name, request)

    return app


def starlette_app(sess: ort.InferenceSession) -> Starlette:
    async def live(request: Request) -> JSONResponse:
        return JSONResponse({"live": True})

    async def infer(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        t = body["inputs"][0]
        X = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
        name = request.path_params["name"]
        return JSONResponse(answer(sess, name, t["name"], X, body.get("id")))

    return Starlette(
        routes=[
            Route("/v2/health/live", live),
            Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        ]
    )


def main() -> None:
    kind, model, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sess = session(model)
    app = starlette_app(sess) if kind == "starlette" else fastapi_app(sess, kind == "fastapi-async")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
