"""Turn OpenAI request bodies into typed requests, or refuse them the way OpenAI does."""

from __future__ import annotations

from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from typing import Literal

import orjson

from saia.testservice.generate import DEFAULT_EMBEDDING_DIMENSIONS, DEFAULT_MAX_TOKENS

JsonObject = dict[str, object]
EncodingFormat = Literal["float", "base64"]

# Keeps a typo such as dimensions=80000 from turning into a huge response.
MAX_EMBEDDING_DIMENSIONS = 4096


class RequestError(Exception):
    """A request the service refuses; rendered as OpenAI's error body."""

    def __init__(
        self, status_code: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True)
class ChatRequest:
    message_texts: list[str]
    last_user_text: str
    max_tokens: int
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class CompletionRequest:
    prompts: list[str]
    max_tokens: int
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class EmbeddingRequest:
    inputs: list[str]
    dimensions: int
    encoding_format: EncodingFormat


@dataclass(frozen=True)
class ResponseRequest:
    """A Responses API request: its input as message texts, the last user text answered."""

    input_texts: list[str]
    last_user_text: str
    max_output_tokens: int


@dataclass(frozen=True)
class AudioRequest:
    """A transcription or translation: the form's model and the audio's name and size."""

    model: str
    filename: str
    audio_bytes: int


def parse_json_object(body: bytes) -> JsonObject:
    """Decode a request body that must be a JSON object."""
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise RequestError(
            400, f"request body is not valid JSON: {error}", code="invalid_json"
        ) from error
    if not isinstance(decoded, dict):
        raise RequestError(400, "request body must be a JSON object", code="invalid_json")
    return decoded


def check_model(body: JsonObject, served_model: str) -> None:
    """Require a model field naming the one model this server serves."""
    model = _required(body, "model")
    if not isinstance(model, str):
        raise _invalid_type("model", "a string")
    if model != served_model:
        raise RequestError(
            404,
            f"The model `{model}` does not exist; this server serves `{served_model}`.",
            param="model",
            code="model_not_found",
        )


def parse_chat_request(body: JsonObject) -> ChatRequest:
    messages = _required(body, "messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid_type("messages", "a non-empty array of messages")
    texts: list[str] = []
    last_user_text = ""
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _invalid_type(param, "an object")
        role = message.get("role")
        if not isinstance(role, str):
            raise _invalid_type(f"{param}.role", "a string")
        text = _message_text(message.get("content"), f"{param}.content")
        texts.append(text)
        if role == "user":
            last_user_text = text
    # OpenAI's newer name wins over the deprecated one when a client sends both.
    max_tokens = _optional_positive_int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _optional_positive_int(body, "max_tokens")
    stream = _optional_bool(body, "stream")
    return ChatRequest(
        message_texts=texts,
        last_user_text=last_user_text,
        max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        stream=stream,
        include_usage=_include_usage(body),
    )


def parse_completion_request(body: JsonObject) -> CompletionRequest:
    max_tokens = _optional_positive_int(body, "max_tokens")
    return CompletionRequest(
        prompts=_string_or_strings(body, "prompt"),
        max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        stream=_optional_bool(body, "stream"),
        include_usage=_include_usage(body),
    )


def parse_embedding_request(body: JsonObject) -> EmbeddingRequest:
    inputs = _string_or_strings(body, "input")
    dimensions = _optional_positive_int(body, "dimensions")
    if dimensions is not None and dimensions > MAX_EMBEDDING_DIMENSIONS:
        raise RequestError(
            400,
            f"dimensions must be at most {MAX_EMBEDDING_DIMENSIONS}",
            param="dimensions",
            code="invalid_value",
        )
    encoding_format = body.get("encoding_format")
    if encoding_format is None:
        encoding_format = "float"
    if encoding_format not in ("float", "base64"):
        raise RequestError(
            400,
            "encoding_format must be 'float' or 'base64'",
            param="encoding_format",
            code="invalid_value",
        )
    return EmbeddingRequest(
        inputs=inputs,
        dimensions=DEFAULT_EMBEDDING_DIMENSIONS if dimensions is None else dimensions,
        encoding_format="float" if encoding_format == "float" else "base64",
    )


def parse_response_request(body: JsonObject) -> ResponseRequest:
    """``input`` is a string or a list of messages whose content is a string or parts."""
    if _optional_bool(body, "stream"):
        raise RequestError(400, "this test service answers responses whole, not streamed",
                           param="stream", code="unsupported_value")  # fmt: skip
    given = _required(body, "input")
    texts: list[str] = []
    last_user_text = ""
    if isinstance(given, str):
        texts, last_user_text = [given], given
    elif isinstance(given, list) and given:
        for index, item in enumerate(given):
            param = f"input[{index}]"
            if not isinstance(item, dict):
                raise _invalid_type(param, "an object")
            text = _input_text(item.get("content"), f"{param}.content")
            texts.append(text)
            if item.get("role") == "user":
                last_user_text = text
    else:
        raise _invalid_type("input", "a string or a non-empty array of input items")
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        texts.append(instructions)
    max_tokens = _optional_positive_int(body, "max_output_tokens")
    return ResponseRequest(texts, last_user_text,
                           DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens)  # fmt: skip


def parse_audio_request(content_type: str, body: bytes) -> AudioRequest:
    """A multipart/form-data body with ``file`` and ``model``, read with the standard
    library's MIME parser (the proxy reads forms its own way: this checks it)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise RequestError(400, "the request must be multipart/form-data", code="invalid_body")
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    fields: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_parts() if message.is_multipart() else ():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes) and name not in fields:
            fields[name] = (part.get_filename() or "", payload)
    for required in ("file", "model"):
        if required not in fields:
            raise RequestError(400, f"Missing required parameter: '{required}'.",
                               param=required, code="missing_required_parameter")  # fmt: skip
    filename, audio = fields["file"]
    return AudioRequest(fields["model"][1].decode("utf-8", "replace"), filename, len(audio))


def _input_text(content: object, param: str) -> str:
    """Text of an input message; content may be a string or input_text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text")) for part in content
                        if isinstance(part, dict) and part.get("type") == "input_text")  # fmt: skip
    raise _invalid_type(param, "a string or an array of content parts")


def _required(body: JsonObject, name: str) -> object:
    value = body.get(name)
    if value is None:
        raise RequestError(
            400,
            f"Missing required parameter: '{name}'.",
            param=name,
            code="missing_required_parameter",
        )
    return value


def _invalid_type(param: str, expected: str) -> RequestError:
    return RequestError(400, f"'{param}' must be {expected}.", param=param, code="invalid_type")


def _message_text(content: object, param: str) -> str:
    """Text of a message; content may be a string, text parts, or null (tool calls)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict):
                raise _invalid_type(param, "a string or an array of content parts")
            text = part.get("text")
            if part.get("type") == "text" and isinstance(text, str):
                texts.append(text)
        return " ".join(texts)
    raise _invalid_type(param, "a string or an array of content parts")


def _string_or_strings(body: JsonObject, name: str) -> list[str]:
    value = _required(body, name)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return [item for item in value if isinstance(item, str)]
    raise _invalid_type(name, "a string or a non-empty array of strings")


def _optional_positive_int(body: JsonObject, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    # bool is a subclass of int in Python, but `true` is no token count.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid_type(name, "a positive integer")
    return value


def _optional_bool(body: JsonObject, name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _invalid_type(name, "a boolean")
    return value


def _include_usage(body: JsonObject) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise _invalid_type("stream_options", "an object")
    include_usage = options.get("include_usage")
    if include_usage is None:
        return False
    if not isinstance(include_usage, bool):
        raise _invalid_type("stream_options.include_usage", "a boolean")
    return include_usage
