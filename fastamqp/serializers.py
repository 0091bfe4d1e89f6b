"""Body serializers shared by both codecs: JSON (the original driver's format) and msgpack.

Both codecs call the same functions here, so the JSON text (and with it the bytes on
the wire) cannot differ between the C and the pure-Python engine. Python's json and
msgpack are themselves C-accelerated.
"""
import json

import msgpack

from fastamqp.exceptions import CodecError

JSON = "json"
MSGPACK = "msgpack"
SERIALIZERS = (JSON, MSGPACK)

# content-type of a msgpack body. JSON bodies carry no content-type, exactly as the
# original driver sent them (REFERENCE §3.8); a JSON data section may say
# application/json.
MSGPACK_CONTENT_TYPE = "application/msgpack"
MSGPACK_CONTENT_TYPES = frozenset(
    (MSGPACK_CONTENT_TYPE, "application/x-msgpack", "application/vnd.msgpack"))
JSON_CONTENT_TYPES = frozenset(("application/json", "text/json"))


def to_primitive(value):
    """Fallback for values JSON/msgpack cannot take directly (datetime, set, ...).

    The original driver serialized with oslo_serialization.jsonutils.dumps, whose
    default hook is to_primitive: use it when it is installed so that the text is the
    same as the original's; otherwise convert the common cases ourselves.
    """
    try:
        from oslo_serialization.jsonutils import to_primitive
    except ImportError:  # pragma: no cover - oslo.serialization ships with oslo.messaging
        to_primitive = None
    if to_primitive is not None:
        return to_primitive(value, convert_instances=True)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not serializable")


_json_encode = json.JSONEncoder(default=to_primitive).encode
_msgpack_pack = msgpack.Packer(default=to_primitive, use_bin_type=True,
                               autoreset=True).pack


# What a JSON encoder raises for data it cannot take (both codecs turn it into CodecError).
JSON_ENCODE_ERRORS = (TypeError, ValueError, RecursionError)


def json_encode_error(exc):
    return CodecError(f"cannot serialize message body as JSON: {exc}")


def dumps_json(data):
    """The JSON text the original driver put in the amqp-value string."""
    try:
        return _json_encode(data)
    except JSON_ENCODE_ERRORS as exc:
        raise json_encode_error(exc) from None


def dumps_msgpack(data):
    try:
        return _msgpack_pack(data)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise CodecError(f"cannot serialize message body as msgpack: {exc}") from None


def loads_json(text):
    """Parse a JSON body given as str (amqp-value string) or bytes (data section)."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CodecError(f"message body is not valid UTF-8: {exc}") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise CodecError("message body JSON is nested too deeply") from None
    except ValueError as exc:
        raise CodecError(f"message body is not valid JSON: {exc}") from None


def loads_msgpack(raw):
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except RecursionError:
        raise CodecError("message body msgpack is nested too deeply") from None
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise CodecError(
            f"message body is not valid msgpack: {type(exc).__name__}: {exc}") from None


def check_serializer(name):
    if name not in SERIALIZERS:
        raise CodecError(
            f"unknown serializer {name!r}: expected one of {', '.join(SERIALIZERS)}")
    return name
