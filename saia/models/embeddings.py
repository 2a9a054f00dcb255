"""An OpenAI-compatible embeddings server for sentence-transformers models exported to ONNX.

Serves ``POST /v1/embeddings`` (float or base64 vectors, usage counted in the model's
own tokens), ``GET /v1/models`` and ``GET /health`` for saia's readiness probe. The
model folder holds ``model.onnx`` (inputs ``input_ids``, ``attention_mask``,
``token_type_ids``; output ``last_hidden_state``) and the model's ``tokenizer.json``;
vectors are mean-pooled over the real tokens and L2-normalised, as all-MiniLM-L6-v2's
sentence-transformers pipeline does. Run it as
``python -m saia.models.embeddings --port P --model-dir DIR --served-model-name NAME``;
the job's secret comes from SAIA_JOB_SECRET, never from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hmac
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tokenizers import Tokenizer

logger = logging.getLogger("saia.models.embeddings")

MAX_INPUTS = 2048  # as OpenAI's embeddings API
MAX_BODY_BYTES = 8 * 1024 * 1024
BATCH = 32  # texts per model run: bounds the memory of one padded batch
Vectors = npt.NDArray[np.float32]


class BadRequest(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


class Encoder:
    """The tokenizer and the ONNX session of one model: texts in, unit vectors out."""

    def __init__(self, model_dir: Path, max_tokens: int, threads: int) -> None:
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.enable_padding()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {node.name for node in self.session.get_inputs()}
        self.dimensions = int(self.session.get_outputs()[0].shape[-1])

    def encode(self, texts: Sequence[str]) -> tuple[Vectors, int]:
        """Unit vectors of the texts, and how many tokens the model read for them."""
        parts: list[Vectors] = []
        tokens = 0
        for start in range(0, len(texts), BATCH):
            vectors, read = self._batch(texts[start : start + BATCH])
            parts.append(vectors)
            tokens += read
        return np.concatenate(parts), tokens

    def _batch(self, texts: Sequence[str]) -> tuple[Vectors, int]:
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask,
                 "token_type_ids": np.zeros_like(ids)}  # fmt: skip
        used = {name: value for name, value in feeds.items() if name in self.input_names}
        (hidden,) = self.session.run(None, used)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        vectors: Vectors = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return vectors, int(mask.sum())


def parse_request(raw: bytes, served: str, dimensions: int) -> tuple[list[str], bool]:
    """The texts to embed and whether base64 was asked for; BadRequest for anything else."""
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest(400, "the request body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "the request body must be a JSON object", "invalid_json")
    if body.get("model") != served:
        message = f"the model {body.get('model')!r} does not exist; this server has {served!r}"
        raise BadRequest(404, message, "model_not_found", "model")
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        message = "'input' must be a non-empty string or a non-empty list of strings"
        raise BadRequest(400, message, "invalid_value", "input")
    if len(texts) > MAX_INPUTS:
        raise BadRequest(400, f"at most {MAX_INPUTS} inputs", "invalid_value", "input")
    if any(not text for text in texts):
        raise BadRequest(400, "'input' cannot contain an empty string", "invalid_value", "input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        message = "'encoding_format' must be 'float' or 'base64'"
        raise BadRequest(400, message, "invalid_value", "encoding_format")
    asked = body.get("dimensions")
    if asked is not None and asked != dimensions:
        message = f"this model's vectors have {dimensions} dimensions"
        raise BadRequest(400, message, "invalid_value", "dimensions")
    return texts, encoding == "base64"


def answer(served: str, vectors: Vectors, tokens: int, as_base64: bool) -> dict[str, Any]:
    def vector(row: Vectors) -> str | list[float]:
        if as_base64:  # little-endian float32, as OpenAI's clients decode it
            return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
        return [float(x) for x in row]

    data = [{"object": "embedding", "index": i, "embedding": vector(row)}
            for i, row in enumerate(vectors)]  # fmt: skip
    return {"object": "list", "data": data, "model": served,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


def error(status: int, message: str, code: str, param: str | None = None) -> Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JsonResponse(body, status_code=status)


def create_app(encoder: Encoder, served: str, api_key: str) -> Starlette:
    created = int(time.time())
    expected = f"Bearer {api_key}".encode()
    one_at_a_time = asyncio.Lock()  # the session already uses every core it was given

    def authorised(request: Request) -> bool:
        given = request.headers.get("authorization", "").encode()
        return not api_key or hmac.compare_digest(given, expected)

    async def health(request: Request) -> Response:
        return JsonResponse({"status": "ok"})

    async def models(request: Request) -> Response:
        if not authorised(request):
            return error(401, "a valid API key is required", "invalid_api_key")
        model = {"id": served, "object": "model", "created": created, "owned_by": "saia"}
        return JsonResponse({"object": "list", "data": [model]})

    async def embeddings(request: Request) -> Response:
        if not authorised(request):
            return error(401, "a valid API key is required", "invalid_api_key")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return error(413, f"the request body exceeds {MAX_BODY_BYTES} bytes", "body_too_large")
        try:
            texts, as_base64 = parse_request(raw, served, encoder.dimensions)
        except BadRequest as bad:
            return error(bad.status, str(bad), bad.code, bad.param)
        async with one_at_a_time:
            vectors, tokens = await run_in_threadpool(encoder.encode, texts)
        return JsonResponse(answer(served, vectors, tokens, as_base64))

    routes = [Route("/health", health), Route("/v1/models", models),
              Route("/v1/embeddings", embeddings, methods=["POST"])]  # fmt: skip
    return Starlette(routes=routes)


def cpus() -> int:
    """The cores Slurm gave the job, else the machine's."""
    given = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(given) if given.isdigit() and int(given) > 0 else os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m saia.models.embeddings",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model-dir", type=Path, required=True,
                        help="folder with model.onnx and tokenizer.json")  # fmt: skip
    parser.add_argument("--served-model-name", required=True, help="the name clients ask for")
    parser.add_argument("--max-tokens", type=int, default=256,
                        help="tokens read of each input, the rest cut off (all-MiniLM-L6-v2: 256)")
    parser.add_argument("--threads", type=int, default=0, help="0: the job's cores")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    missing = [name for name in ("model.onnx", "tokenizer.json")
               if not (args.model_dir / name).is_file()]  # fmt: skip
    if missing:
        raise SystemExit(f"embeddings: {args.model_dir} has no {' or '.join(missing)}")
    started = time.monotonic()
    encoder = Encoder(args.model_dir, args.max_tokens, args.threads or cpus())
    logger.info("loaded %s (%d dimensions) in %.2f s", args.model_dir, encoder.dimensions,
                time.monotonic() - started)  # fmt: skip
    app = create_app(encoder, args.served_model_name, os.environ.get("SAIA_JOB_SECRET", ""))
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="info",
                timeout_graceful_shutdown=30)  # fmt: skip


if __name__ == "__main__":
    main()
