"""The usage chunk the proxy asked for, taken out of the stream of a client that did not.

To meter a streamed (chat) completion the proxy adds ``stream_options.include_usage``;
the job then sends one more event before ``data: [DONE]``: no choices, only usage.
The client did not ask for it, and gets the stream it asked for. The meter reads the
stream before this filter, so the tokens are counted all the same.

Events may be split across chunks: what follows the last complete event waits for
the rest of it. Only events that contain ``"usage"`` are parsed.
"""

from __future__ import annotations

import orjson

USAGE = b'"usage"'
EVENT_ENDS = (b"\n\n", b"\r\n\r\n")  # the blank line that ends an SSE event
# What waits for the end of its event: beyond it, it goes on unfiltered, so a stream
# that never ends an event (or ends them in a way not looked for) is never held back.
MAX_CARRY = 64 * 1024


class UsageChunkFilter:
    def __init__(self) -> None:
        self._carry = b""

    def feed(self, chunk: bytes) -> bytes:
        """What of the stream so far can go to the client now."""
        data = self._carry + chunk if self._carry else chunk
        end = _last_event_end(data)
        if end == 0:
            if len(data) > MAX_CARRY:
                self._carry = b""
                return data
            self._carry = data
            return b""
        self._carry = data[end:]
        return _without_usage_chunk(data[:end])

    def flush(self) -> bytes:
        """What is left at the end of the stream: an unfinished event, passed on as it is."""
        rest, self._carry = self._carry, b""
        return rest


def _last_event_end(data: bytes) -> int:
    """The index just after the last complete event, 0 where there is none."""
    return max((at + len(end) for end in EVENT_ENDS if (at := data.rfind(end)) != -1), default=0)


def _next_event_end(data: bytes, start: int) -> int:
    ends = [at + len(end) for end in EVENT_ENDS if (at := data.find(end, start)) != -1]
    return min(ends, default=len(data))


def _without_usage_chunk(events: bytes) -> bytes:
    if USAGE not in events:
        return events
    kept: list[bytes] = []
    start = 0
    while start < len(events):
        end = _next_event_end(events, start)
        event = events[start:end]
        if USAGE not in event or not is_usage_chunk(event):
            kept.append(event)
        start = end
    return b"".join(kept)


def is_usage_chunk(event: bytes) -> bool:
    """Whether an SSE event is the usage chunk: a JSON object with no choices and a usage."""
    data = b"\n".join(line[5:].removeprefix(b" ") for line in event.splitlines()
                      if line.startswith(b"data:"))  # fmt: skip
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return (isinstance(document, dict) and document.get("choices") == []
            and isinstance(document.get("usage"), dict))  # fmt: skip
