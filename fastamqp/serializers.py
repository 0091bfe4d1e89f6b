"""Body serializers shared by both codecs: JSON (the original driver's format) and msgpack.

JSON bodies go through maintained C libraries where they are installed, with the stdlib
json module as the fallback for whatever they do not take the stdlib's way:

* encoding: orjson, 1.6x msgspec's speed on our bodies, and the one whose options hand
  datetimes, dataclasses and subclasses of str/int/dict/list back to us instead of
  writing them its own way (oslo's jsonutils sends those through ``to_primitive``;
  msgspec would write datetimes, sets, bytes and Decimals itself);
* decoding: msgspec, as fast as orjson.loads on our bodies, and exact: orjson.loads
  turns an integer beyond 64 bits into a float without a word, and the original
  driver's json.dumps writes such integers.

The contract is not the stdlib's bytes but its values: every body decodes, in either
engine and in the original driver (json.loads), to what json.dumps/json.loads give.
The C engine (``_core``) calls the same library functions with the same fallbacks, so
both engines also give the same bytes. ``FASTAMQP_JSON=stdlib`` in the environment at
import time forces the stdlib for both directions (the text is then exactly
jsonutils.dumps'); docs/benchmarks.md has the measurements behind the choice.
"""
import json
import math
import os

import msgpack

from fastamqp.exceptions import CodecError

try:
    import orjson
except ImportError:  # pragma: no cover - a dependency; absent where no wheel exists
    orjson = None
try:
    import msgspec
except ImportError:  # pragma: no cover - a dependency; absent where no wheel exists
    msgspec = None

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


def _json_stdlib_forced():
    return os.environ.get("FASTAMQP_JSON", "").strip().lower() == "stdlib"


# The library functions, or None where a library is missing or FASTAMQP_JSON=stdlib.
# The C engine reads these at import, so both engines make the same choice.
ORJSON_DUMPS = None if orjson is None or _json_stdlib_forced() else orjson.dumps
ORJSON_ERROR = orjson.JSONEncodeError if orjson is not None else TypeError
# Without these orjson writes datetimes (its own ISO 8601: microseconds only when not
# zero, the UTC offset), dataclasses and subclasses (an OrderedDict in its dict order,
# a dict subclass without its items()) its own way; with them it raises, and the
# stdlib with to_primitive writes them.
# orjson still writes Enum members as their value and UUIDs as str(uuid) itself:
# jsonutils gives the same for UUIDs, IntEnum and str enums.
ORJSON_OPTIONS = 0 if orjson is None else (orjson.OPT_PASSTHROUGH_DATETIME
                                           | orjson.OPT_PASSTHROUGH_DATACLASS
                                           | orjson.OPT_PASSTHROUGH_SUBCLASS)
MSGSPEC_LOADS = (None if msgspec is None or _json_stdlib_forced()
                 else msgspec.json.Decoder().decode)


def json_libraries():
    """What encodes and decodes JSON bodies in this process, for codec-check and docs."""
    dumps = f"orjson {orjson.__version__}" if ORJSON_DUMPS is not None else "stdlib json"
    loads = (f"msgspec {msgspec.__version__}" if MSGSPEC_LOADS is not None
             else "stdlib json")
    return f"dumps: {dumps}, loads: {loads}"


# What the stdlib encoder raises for data it cannot take (turned into CodecError).
JSON_ENCODE_ERRORS = (TypeError, ValueError, RecursionError)

_isfinite = math.isfinite


def has_nonfinite_float(value):
    """Whether NaN or an infinity sits in value, a document orjson has just encoded.

    orjson writes these as null; the stdlib (and so the original driver) writes NaN,
    Infinity and -Infinity and reads them back. Only exact containers and floats can
    be here: orjson raises on anything that needs a default or is a subclass.
    The C engine has the same walk in C (``_core._has_nonfinite_float``).
    """
    kind = type(value)
    if kind is float:
        return not _isfinite(value)
    if kind is dict:
        value = value.values()
    elif kind is not list and kind is not tuple:
        return False
    for item in value:
        kind = type(item)
        if kind is float:
            if not _isfinite(item):
                return True
        elif (kind is dict or kind is list or kind is tuple) and has_nonfinite_float(item):
            return True
    return False


def dumps_json(data):
    """UTF-8 JSON text of a body: orjson's where it writes what json.dumps means."""
    if ORJSON_DUMPS is not None:
        try:
            text = ORJSON_DUMPS(data, None, ORJSON_OPTIONS)
        except ORJSON_ERROR:
            pass  # integers beyond 64 bits, non-str keys, what needs to_primitive, ...
        else:
            # "l" first: a one-byte search is a memchr, a four-byte one a slow loop
            # (0.7 µs on a 1 KiB body), and many bodies have no "l" at all.
            if b"l" not in text or b"null" not in text or not has_nonfinite_float(data):
                return text
    return dumps_json_stdlib(data)


def dumps_json_stdlib(data):
    """The text jsonutils.dumps gives (ASCII, so UTF-8 as it is), as bytes."""
    try:
        return _json_encode(data).encode("ascii")
    except JSON_ENCODE_ERRORS as exc:
        raise CodecError(f"cannot serialize message body as JSON: {exc}") from None


def dumps_msgpack(data):
    try:
        return _msgpack_pack(data)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise CodecError(f"cannot serialize message body as msgpack: {exc}") from None


def loads_json(text):
    """Parse a JSON body given as str (amqp-value string) or bytes (data section)."""
    if MSGSPEC_LOADS is not None:
        try:
            return MSGSPEC_LOADS(text)
        except (ValueError, RecursionError):
            # msgspec refuses NaN, Infinity, lone surrogate escapes and numbers beyond
            # a double, all of which json.loads takes; the stdlib has the last word.
            pass
    return loads_json_stdlib(text)


def loads_json_stdlib(text):
    """json.loads' value, or CodecError where json.loads refuses the text."""
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
