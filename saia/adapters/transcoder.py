"""An orjson transcoder that keeps eventsourcing's tagged transcodings.

It subclasses JSONTranscoder so UUID, Decimal and datetime transcodings still
register. orjson would flatten datetimes and UUIDs on its own, losing their
type on the way back, so registered types are tagged before dumping.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import JSONTranscoder

_DUMP_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class OrjsonTranscoder(JSONTranscoder):
    def encode(self, obj: Any) -> bytes:
        return orjson.dumps(_tag_uuids(obj), default=self._encode_obj, option=_DUMP_OPTIONS)

    def decode(self, data: bytes) -> Any:
        return self._untag(orjson.loads(data))

    def _untag(self, value: Any) -> Any:
        if isinstance(value, dict):
            if len(value) == 2 and "_type_" in value and "_data_" in value:
                data = self._untag(value["_data_"])
                return self._decode_obj({"_type_": value["_type_"], "_data_": data})
            return {k: self._untag(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._untag(v) for v in value]
        return value


def _tag_uuids(value: Any) -> Any:
    """Route UUIDs through the registered transcoding instead of orjson's own."""
    if isinstance(value, dict):
        if any(isinstance(v, UUID | dict | list) for v in value.values()):
            return {k: _tag_uuids(v) for k, v in value.items()}
        return value
    if isinstance(value, list):
        return [_tag_uuids(v) for v in value]
    if isinstance(value, UUID):
        return {"_type_": "uuid_hex", "_data_": value.hex}
    return value
