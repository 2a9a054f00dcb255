"""An orjson transcoder that keeps eventsourcing's tagged transcodings.

It subclasses JSONTranscoder so UUID, Decimal and datetime transcodings still
register. orjson would flatten datetimes and UUIDs on its own, losing their
type on the way back, so registered types are tagged before dumping.

Every recorded event and every replayed one passes through here, so both
directions skip, without copying, the values that JSON holds as they are.
"""

from __future__ import annotations

from typing import Any

import orjson
from eventsourcing.persistence import JSONTranscoder

_DUMP_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
# Exact types, not isinstance: an enum subclassing str must still reach orjson.
_PLAIN = frozenset({str, int, float, bool, type(None)})


class OrjsonTranscoder(JSONTranscoder):
    def encode(self, obj: Any) -> bytes:
        return orjson.dumps(self._tag(obj), default=self._encode_obj, option=_DUMP_OPTIONS)

    def decode(self, data: bytes) -> Any:
        return self._untag(orjson.loads(data))

    def _tag(self, value: Any) -> Any:
        """``value`` with registered types as ``{"_type_", "_data_"}``; never changes it."""
        kind = type(value)
        if kind is dict:
            tagged = None
            for key, item in value.items():
                if type(item) not in _PLAIN:
                    if tagged is None:
                        tagged = dict(value)
                    tagged[key] = self._tag(item)
            return value if tagged is None else tagged
        if kind is list or kind is tuple:
            if all(type(item) in _PLAIN for item in value):
                return value
            return [self._tag(item) for item in value]
        transcoding = self.types.get(kind)
        if transcoding is None:
            return value  # orjson's own type, or its default hook names the problem
        data = transcoding.encode(value)
        if type(data) not in _PLAIN:
            data = self._tag(data)
        return {"_type_": transcoding.name, "_data_": data}

    def _untag(self, value: Any) -> Any:
        """Decoded JSON with tagged values turned back into their types, in place."""
        if type(value) is dict:
            if len(value) == 2 and "_type_" in value and "_data_" in value:
                value["_data_"] = self._untag(value["_data_"])
                return self._decode_obj(value)
            for key, item in value.items():
                if type(item) is dict or type(item) is list:
                    value[key] = self._untag(item)
            return value
        if type(value) is list:
            for index, item in enumerate(value):
                if type(item) is dict or type(item) is list:
                    value[index] = self._untag(item)
        return value
