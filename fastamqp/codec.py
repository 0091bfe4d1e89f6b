"""The message codec of the active engine (see fastamqp.engine).

Both implementations stay reachable for tests and benchmarks as
``fastamqp.engine.c_codec`` (None without the extension) and
``fastamqp.engine.py_codec``.
"""
from fastamqp.engine import codec as _active
from fastamqp.message import (DEFAULT_MAX_MESSAGE_SIZE, HEARTBEAT, REPLY,  # noqa: F401
                              REQUEST, DecodedMessage)
from fastamqp.serializers import JSON, MSGPACK, SERIALIZERS  # noqa: F401

encode_request = _active.encode_request
encode_notification = _active.encode_notification
encode_reply = _active.encode_reply
encode_heartbeat = _active.encode_heartbeat
decode = _active.decode
new_message_id = _active.new_message_id
IMPLEMENTATION = _active.IMPLEMENTATION
