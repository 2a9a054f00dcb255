"""uvicorn's httptools protocol with a bound on the request head: larger heads get 431.

llhttp, under uvicorn, takes a head of any size (2 MB were answered here), and
the proxy's session to the login node carries the head's path and headers on
as HTTP/2, whose peer ends the whole session on a header list past its limit.
So the head, from the request line to the blank line, is counted as its bytes
arrive: one byte over ``max_head_bytes`` and the request is answered 431 and
the connection closed, before the parser holds any more of it.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

END_OF_HEAD = b"\r\n\r\n"
REFUSAL = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
)
BODY = (
    b'{"error":{"message":"the request head is larger than %d bytes",'
    b'"type":"invalid_request_error","param":null,"code":"head_too_large"}}'
)


class BoundedHeadProtocol(HttpToolsProtocol):
    max_head_bytes = 32 * 1024  # set by ``bounded``

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head = 0  # bytes of the current head seen so far
        self._in_head = True  # False from the head's end to the message's
        self._tail = b""  # the last bytes of the head so far: the blank line may straddle

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            seen = self._tail + data
            end = seen.find(END_OF_HEAD)
            size = self._head + (len(data) if end < 0 else end + len(END_OF_HEAD) - len(self._tail))
            if size > self.max_head_bytes:
                self._refuse()
                return
            if end < 0:
                self._head, self._tail = size, seen[-3:]
            else:
                self._in_head, self._head, self._tail = False, 0, b""
        super().data_received(data)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # the next request on this connection starts its head

    def _refuse(self) -> None:
        body = BODY % self.max_head_bytes
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(REFUSAL % (len(body), body))
            self.transport.close()


def bounded(max_head_bytes: int) -> type[BoundedHeadProtocol]:
    """The protocol class for uvicorn's ``http`` setting, with this bound."""
    return type("BoundedHeadProtocol", (BoundedHeadProtocol,), {"max_head_bytes": max_head_bytes})
