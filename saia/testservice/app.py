"""The Starlette application: OpenAI-compatible routes over deterministic generation."""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import orjson
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from saia.testservice import shapes, streaming
from saia.testservice.generate import (
    REPLY_PREFIX,
    count_tokens,
    echo_reply,
    embed,
    encode_embedding_base64,
)
from saia.testservice.parsing import (
    JsonObject,
    RequestError,
    check_model,
    parse_audio_request,
    parse_chat_request,
    parse_completion_request,
    parse_embedding_request,
    parse_json_object,
    parse_response_request,
)

DEFAULT_MODEL = "test-model"
# Long enough for the admin/exit response to leave the socket before the process vanishes.
EXIT_GRACE_SECONDS = 0.1


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    token_delay: float = 0.0
    # The job's secret (SAIA_JOB_SECRET): when set, every request must carry it as
    # "Authorization: Bearer ...", as vLLM's --api-key asks, so that only the login
    # node's entrypoint, not any user of the cluster, can use the port.
    api_key: str = ""
    # Tests replace this so that POST /admin/exit does not end the test runner.
    exit_process: Callable[[int], None] = field(default=os._exit)


@dataclass
class ServedCount:
    """Requests that reached the model routes: tests prove with it that a request the
    proxy refused never got this far."""

    requests: int = 0


class CountModelRequests:
    """Plain ASGI, so that counting costs the benchmarks' baseline next to nothing."""

    def __init__(self, app: ASGIApp, served: ServedCount) -> None:
        self.app = app
        self.served = served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            self.served.requests += 1
        await self.app(scope, receive, send)


class RequireBearer:
    """Plain ASGI: 401 for any request without the key, before anything else runs."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = next((v for n, v in scope["headers"] if n == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):
                body = orjson.dumps({"error": {"message": "Unauthorized", "code": 401}})
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json")]})  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


def create_app(settings: Settings) -> Starlette:
    started_at = shapes.now()
    served = ServedCount()

    async def health(request: Request) -> Response:
        return JsonResponse({"status": "ok"})

    async def models(request: Request) -> Response:
        return JsonResponse(shapes.model_list(settings.model, started_at))

    async def chat_completions(request: Request) -> Response:
        body = await _model_request_body(request, settings.model)
        chat = parse_chat_request(body)
        reply = echo_reply(chat.last_user_text, chat.max_tokens)
        prompt_tokens = count_tokens(chat.message_texts)
        if chat.stream:
            return _event_stream(
                streaming.chat_chunks(
                    settings.model, reply, prompt_tokens, chat.include_usage, settings.token_delay
                )
            )
        return JsonResponse(shapes.chat_completion(settings.model, reply, prompt_tokens))

    async def completions(request: Request) -> Response:
        body = await _model_request_body(request, settings.model)
        completion = parse_completion_request(body)
        replies = [echo_reply(prompt, completion.max_tokens) for prompt in completion.prompts]
        prompt_tokens = count_tokens(completion.prompts)
        if completion.stream:
            return _event_stream(
                streaming.completion_chunks(
                    settings.model,
                    replies,
                    prompt_tokens,
                    completion.include_usage,
                    settings.token_delay,
                )
            )
        return JsonResponse(shapes.text_completion(settings.model, replies, prompt_tokens))

    async def embeddings(request: Request) -> Response:
        body = await _model_request_body(request, settings.model)
        embedding = parse_embedding_request(body)
        vectors = [embed(text, embedding.dimensions) for text in embedding.inputs]
        encoded: list[list[float] | str] = (
            [encode_embedding_base64(vector) for vector in vectors]
            if embedding.encoding_format == "base64"
            else list(vectors)
        )
        prompt_tokens = count_tokens(embedding.inputs)
        return JsonResponse(shapes.embedding_list(settings.model, encoded, prompt_tokens))

    async def responses(request: Request) -> Response:
        body = await _model_request_body(request, settings.model)
        asked = parse_response_request(body)
        reply = echo_reply(asked.last_user_text, asked.max_output_tokens)
        return JsonResponse(shapes.response(settings.model, reply, count_tokens(asked.input_texts)))

    async def audio(request: Request) -> Response:
        """Transcriptions and translations: the audio's name and size, echoed."""
        asked = parse_audio_request(request.headers.get("content-type", ""), await request.body())
        check_model({"model": asked.model}, settings.model)
        return JsonResponse({"text": f"{REPLY_PREFIX} {asked.filename} {asked.audio_bytes} bytes"})

    async def admin_stats(request: Request) -> Response:
        return JsonResponse({"requests": served.requests})

    async def admin_exit(request: Request) -> Response:
        """Make the process die, to simulate a service failing inside a running job."""
        raw = await request.body()
        body = parse_json_object(raw) if raw.strip() else {}
        code = body.get("code", 1)
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 255:
            raise RequestError(400, "'code' must be an integer from 0 to 255.", param="code")

        async def exit_after_response() -> None:
            await asyncio.sleep(EXIT_GRACE_SECONDS)
            settings.exit_process(code)

        return JsonResponse(
            {"status": "exiting", "code": code},
            status_code=202,
            background=BackgroundTask(exit_after_response),
        )

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/responses", responses, methods=["POST"]),
            Route("/v1/audio/transcriptions", audio, methods=["POST"]),
            Route("/v1/audio/translations", audio, methods=["POST"]),
            Route("/admin/exit", admin_exit, methods=["POST"]),
            Route("/admin/stats", admin_stats, methods=["GET"]),
        ],
        middleware=[
            *([Middleware(RequireBearer, key=settings.api_key)] if settings.api_key else []),
            Middleware(CountModelRequests, served=served),
        ],
        exception_handlers={
            RequestError: _request_error_response,
            HTTPException: _http_error_response,
        },
    )


async def _model_request_body(request: Request, served_model: str) -> JsonObject:
    body = parse_json_object(await request.body())
    check_model(body, served_model)
    return body


def _event_stream(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    # no-cache and no proxy buffering: every chunk must reach the client as it is produced.
    return StreamingResponse(
        chunks,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _request_error_response(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestError)
    return JsonResponse(
        shapes.error_body(error.message, error.param, error.code), status_code=error.status_code
    )


async def _http_error_response(request: Request, error: Exception) -> Response:
    # Unknown paths and wrong methods get the same error shape as everything else,
    # so an OpenAI client reports them properly instead of failing to parse plain text.
    assert isinstance(error, HTTPException)
    return JsonResponse(
        shapes.error_body(error.detail, None, None),
        status_code=error.status_code,
        headers=error.headers,
    )
