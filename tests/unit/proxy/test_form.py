"""Finding a form field's value in a multipart/form-data body, as the proxy routes audio."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from saia.proxy.form import boundary, field_span, is_multipart

NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}(/[A-Za-z0-9._:-]{1,20}){0,2}",
                      fullmatch=True)  # fmt: skip


def encoded(data: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A body and content type as httpx (the openai client's transport) encodes them."""
    request = httpx.Request("POST", "http://x", data=data, files=files)
    return request.read(), request.headers["content-type"]


def value(body: bytes, content_type: str, name: str = "model") -> bytes | None:
    span = field_span(body, content_type, name)
    return None if span is None else body[span[0] : span[1]]


@given(model=NAMES, audio=st.binary(max_size=512), before=st.booleans())
def test_the_model_field_is_found_wherever_it_is(model: str, audio: bytes, before: bool) -> None:
    """Before or after the file, whatever the file holds, the field's value is found."""
    fields = {"model": model, "language": "de"}
    body, content_type = encoded(fields if before else {"language": "de"},
                                 {"file": ("a.wav", audio)})  # fmt: skip
    if not before:  # the field after the file: build the body by hand
        separator = boundary(content_type)
        assert separator is not None
        tail = b"--" + separator + b"--\r\n"
        body = (body[: -len(tail)] + b"--" + separator +
                b'\r\nContent-Disposition: form-data; name="model"\r\n\r\n' +
                model.encode() + b"\r\n" + tail)  # fmt: skip
    assert value(body, content_type) == model.encode()


def test_a_file_named_model_is_not_the_model_field() -> None:
    """filename="model" and a field "model_x" are not the field "model"."""
    body, content_type = encoded({"model_x": "no"}, {"file": ("model", b"x")})
    assert value(body, content_type) is None


@pytest.mark.parametrize(
    ("content_type", "found"),
    [
        ("multipart/form-data; boundary=abc", b"abc"),
        ('multipart/form-data; boundary="a b:c"', b"a b:c"),
        ("Multipart/Form-Data;charset=utf-8;BOUNDARY=xyz", b"xyz"),
        ("multipart/form-data", None),
    ],
)
def test_the_boundary_is_read_quoted_or_not(content_type: str, found: bytes | None) -> None:
    """The content type's boundary parameter, in either of RFC 2046's forms."""
    assert is_multipart(content_type)
    assert boundary(content_type) == found


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"--abc\r\nContent-Disposition: form-data; name=model\r\n\r\nm",  # never closed
        b"--abc\r\nContent-Disposition: form-data; name=model",  # no end of head
        b"--abc--\r\n",
        b"garbage without any delimiter",
    ],
)
def test_a_body_that_is_not_what_its_type_says_has_no_field(body: bytes) -> None:
    """Truncated or foreign bodies give no value; nothing raises."""
    assert value(body, "multipart/form-data; boundary=abc") is None


def test_a_preamble_and_unquoted_names_are_read() -> None:
    """Text before the first delimiter is skipped; name=model needs no quotes."""
    body = (b"preamble\r\n--abc\r\ncontent-disposition: form-data; name=model\r\n\r\n"
            b"org/m\r\n--abc--\r\n")  # fmt: skip
    assert value(body, "multipart/form-data; boundary=abc") == b"org/m"
