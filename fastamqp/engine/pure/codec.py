"""Message codec on python-qpid-proton: the reference twin of the C codec in ``_core``.

It builds messages exactly as the original driver did (``proton.Message(inferred=True)``
with a JSON string body, REFERENCE §3.8), with one deliberate difference: the
absolute-expiry-time is wall-clock time (REFERENCE §3.9 #1). The JSON text comes from
``fastamqp.serializers``: the values jsonutils.dumps wrote, not always its spacing.

Two implementations of the same functions: one on ``proton.Message`` (any
python-qpid-proton), and, where python-qpid-proton binds Proton C through cffi (0.39 and
later), one that calls Proton C through that binding the way the C codec (``_core``)
does: a reused pn_message_t, the JSON text put into the body as it was written, the
output buffer sized once. ``proton.Message`` made four ``proton.Data`` wrappers per
message, encoded into a 16-byte buffer that it doubled until the message fitted (eight
encodings of a 1 KiB cast), and re-decoded the body text it had just been given; the
fast path encodes a 1 KiB cast in about a third of the time and decodes it in about
half (benchmarks: see encode/decode below). Same bytes, same results (tests compare
both paths and the C codec).
"""
import threading
import time
import uuid

import cproton
import proton

try:  # python-qpid-proton >= 0.39 binds Proton C through cffi: the fast path below
    from cproton_ffi import ffi as _ffi, lib as _lib
except ImportError:  # 0.37 / 0.38 (SWIG): only the proton.Message path
    _ffi = _lib = None

from fastamqp import message as _message
from fastamqp import serializers as _ser
from fastamqp.exceptions import CodecError

IMPLEMENTATION = "python"


def _new_message(address, serializer, data):
    msg = proton.Message(inferred=True)
    msg.address = address
    if serializer == _ser.JSON:
        # A str body is what makes Proton write an amqp-value string (REFERENCE §3.8).
        msg.body = _ser.dumps_json(data).decode("utf-8")
    else:
        msg.content_type = _ser.MSGPACK_CONTENT_TYPE
        msg.body = _ser.dumps_msgpack(data)  # bytes + inferred: a data section
    return msg


def _encode(msg, non_durable=False):
    try:
        data = bytes(msg.encode())
    except Exception as exc:  # proton raises MessageException, cffi TypeError/OverflowError
        raise CodecError(f"cannot encode AMQP message: {exc}") from None
    return _message.mark_non_durable(data) if non_durable else data


def _check_address(name, value):
    if not isinstance(value, str):
        raise CodecError(f"{name} must be a str, not {type(value).__name__}")
    if "\0" in value:
        raise CodecError(f"{name} contains a NUL character")


def _check_id(name, value):
    if not isinstance(value, (str, bytes, int, uuid.UUID)) or isinstance(value, bool):
        raise CodecError(f"{name} must be str, bytes, int or UUID, "
                         f"not {type(value).__name__}")
    if isinstance(value, int) and not 0 <= value < 2 ** 64:
        raise CodecError(f"{name} {value} does not fit an AMQP ulong")
    if isinstance(value, str) and "\0" in value:
        raise CodecError(f"{name} contains a NUL character")


_scratch = threading.local()


def _walker():
    """This thread's strict decoder, kept: a new proton.Data per message (and its
    finaliser) was a tenth of an RPC server's receive cost in the end-to-end profile."""
    walker = getattr(_scratch, "data", None)
    if walker is None:
        walker = _scratch.data = proton.Data()
    return walker


def _check_sections(data):
    """Walk the top-level sections with Proton's strict decoder (see message.SECTION_NAMES)."""
    # Through cproton, not proton.Data's methods: the wrappers' checks and type
    # conversions cost more than the decoding itself, once per section of every
    # message received.
    walker = _walker()
    raw = walker._data
    view = memoryview(data)
    offset = index = 0
    previous = None
    while offset < len(data):
        cproton.pn_data_clear(raw)
        used = cproton.pn_data_decode(raw, view[offset:])
        if used < 0:
            raise CodecError(f"not an AMQP message: {_data_error(used, raw)} at offset "
                             f"{offset}")
        cproton.pn_data_rewind(raw)
        code = None
        if cproton.pn_data_next(raw) and cproton.pn_data_type(raw) == proton.Data.DESCRIBED:
            cproton.pn_data_enter(raw)
            if cproton.pn_data_next(raw) and cproton.pn_data_type(raw) == proton.Data.ULONG:
                code = cproton.pn_data_get_ulong(raw)
                if code == _message.APPLICATION_PROPERTIES:
                    _check_property_keys(walker, offset)
        previous = _message.check_section(index, offset, code, previous)
        offset += used
        index += 1


_TYPE_NAMES = {getattr(proton.Data, name): name.lower() for name in (
    "NULL", "BOOL", "UBYTE", "BYTE", "USHORT", "SHORT", "UINT", "INT", "CHAR", "ULONG",
    "LONG", "TIMESTAMP", "FLOAT", "DOUBLE", "DECIMAL32", "DECIMAL64", "DECIMAL128",
    "UUID", "BINARY", "STRING", "SYMBOL", "DESCRIBED", "ARRAY", "LIST", "MAP")}


def _check_property_keys(walker, offset):
    if walker.next() != proton.Data.MAP:
        return  # a null or non-map value: pn_message_decode judges it
    count = walker.get_map()
    walker.enter()
    for _ in range(0, count, 2):
        kind = walker.next()
        if kind != proton.Data.STRING:
            raise _message.application_property_key_error(offset, _TYPE_NAMES[kind])
        walker.next()


def _data_error(code, raw):
    # The codes are Proton's PN_* errors; the rest reads as proton.DataException did.
    if code == -4:
        return "truncated input (PN_UNDERFLOW)"
    if code == -6:
        return "invalid encoding (PN_ARG_ERR)"
    detail = cproton.pn_error_text(cproton.pn_data_error(raw))
    return f"invalid encoding ([{code}]: {detail})"


def _ttl_ms(seconds):
    # Truncating like python-qpid-proton's secs2millis; clamped to what the header holds.
    return min(max(int(seconds * 1000), 0), _message.MAX_TTL_MS)


def _request_body(address, request, context, message_id, reply_to, timeout,
                  call_monitor_timeout, envelope, serializer):
    """A request's arguments checked, and its body: for both encoders (the message
    path and the cffi path below)."""
    _ser.check_serializer(serializer)
    _check_address("address", address)
    if envelope:
        request = _message.envelope(_ser.dumps_json(request).decode("utf-8"))
    data = {"request": request, "context": context}
    if call_monitor_timeout is not None:
        data["call_monitor_timeout"] = call_monitor_timeout
    if message_id is not None:
        _check_id("message_id", message_id)
    if reply_to is not None:
        _check_address("reply_to", reply_to)
    if timeout is not None:
        _message.check_finite("timeout", timeout)
    if call_monitor_timeout is not None:
        _message.check_finite("call_monitor_timeout", call_monitor_timeout)
    return data


def _reply_body(address, correlation_id, response, failure, serializer):
    """A reply's arguments checked, and its body (both encoders)."""
    _ser.check_serializer(serializer)
    _check_address("address", address)
    _check_id("correlation_id", correlation_id)
    if failure is not None and not isinstance(failure, str):
        raise CodecError("failure must be the serialized exception (str)")
    return {"failure": failure} if failure else {"response": response}


def _check_heartbeat(address, correlation_id, ttl):
    _check_address("address", address)
    _check_id("correlation_id", correlation_id)
    if ttl is not None:
        _message.check_finite("ttl", ttl)


def encode_request(address, request, context, *, message_id=None, reply_to=None,
                   timeout=None, call_monitor_timeout=None, envelope=False,
                   serializer=_ser.JSON, now=None, non_durable=False):
    """RPC call or cast (``message_id``/``reply_to`` for calls), or a notification.
    ``non_durable``: the header says durable = false explicitly (message.py)."""
    data = _request_body(address, request, context, message_id, reply_to, timeout,
                         call_monitor_timeout, envelope, serializer)
    msg = _new_message(address, serializer, data)
    if message_id is not None:
        msg.id = message_id
    if reply_to is not None:
        msg.reply_to = reply_to
    if timeout:
        # Set in milliseconds through the C layer: a round trip through Message's
        # float-seconds properties can lose a millisecond.
        cproton.pn_message_set_ttl(msg._msg, _ttl_ms(timeout))
        wall = time.time() if now is None else now
        cproton.pn_message_set_expiry_time(msg._msg, int((wall + timeout) * 1000))
    return _encode(msg, non_durable)


def encode_notification(address, message, context, version=2.0, *,
                        serializer=_ser.JSON, non_durable=False):
    """A notification: enveloped for message version 2.0, as oslo's notifier sends."""
    return encode_request(address, message, context, envelope=(version == 2.0),
                          serializer=serializer, non_durable=non_durable)


def encode_reply(address, correlation_id, response=None, failure=None, *,
                 serializer=_ser.JSON, non_durable=False):
    """RPC reply: ``failure`` is the serialized remote exception (a JSON string)."""
    data = _reply_body(address, correlation_id, response, failure, serializer)
    msg = _new_message(address, serializer, data)
    msg.correlation_id = correlation_id
    return _encode(msg, non_durable)


def encode_heartbeat(address, correlation_id, ttl, *, non_durable=False):
    """Call-monitor heartbeat: no body section, just correlation-id and ttl."""
    _check_heartbeat(address, correlation_id, ttl)
    msg = proton.Message()
    msg.address = address
    msg.correlation_id = correlation_id
    if ttl:
        cproton.pn_message_set_ttl(msg._msg, _ttl_ms(ttl))
    return _encode(msg, non_durable)


def _id_value(value):
    if isinstance(value, memoryview):  # python-qpid-proton 0.40 returns binary ids so
        return bytes(value)
    if value is None or isinstance(value, (str, bytes, uuid.UUID)):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)  # proton.ulong -> int
    raise CodecError(f"message id of unsupported type {type(value).__name__}")


def _optional_str(value):
    if value is None:
        return None
    return str(value)


def _body_parts(msg):
    """(serializer, has_body, parsed body) from the decoded message's body section."""
    body = msg.body
    if body is None:
        return None, False, None
    content_type = _content_type(msg)
    if type(body) is str:  # not proton.symbol or proton.char: oslo bodies are strings
        if content_type in _ser.MSGPACK_CONTENT_TYPES:
            raise CodecError("msgpack content-type on a string (amqp-value) body")
        return _ser.JSON, True, _ser.loads_json(body)
    if isinstance(body, (bytes, memoryview, bytearray)):
        raw = bytes(body)
        if content_type in _ser.MSGPACK_CONTENT_TYPES:
            return _ser.MSGPACK, True, _ser.loads_msgpack(raw)
        if content_type is None or content_type in _ser.JSON_CONTENT_TYPES:
            return _ser.JSON, True, _ser.loads_json(raw)
        raise CodecError(f"unsupported content-type {content_type!r} for a binary body")
    if msg.inferred and isinstance(body, list):
        raise CodecError("wrong body section: amqp-sequence, expected amqp-value "
                         "(JSON text) or data")
    raise CodecError(f"wrong body: amqp-value holds {type(body).__name__}, "
                     f"expected a string (JSON text)")


def _content_type(msg):
    # python-qpid-proton 0.40 turns an absent content-type into symbol('None'); ask
    # the C layer directly.
    raw = cproton.pn_message_get_content_type(msg._msg)
    return None if raw is None else str(raw)


def decode(data, max_size=_message.DEFAULT_MAX_MESSAGE_SIZE):
    """Decode one AMQP message (the bytes of a transfer) into a DecodedMessage."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected bytes, not {type(data).__name__}")
    size = len(data)
    if size > max_size:
        raise CodecError(f"message of {size} bytes exceeds the limit of {max_size} bytes")
    if size == 0:
        raise CodecError("not an AMQP message: empty input")
    data = bytes(data)
    _check_sections(data)
    # A new Message each time: pn_message_decode does not reset the header and
    # properties a previous message set (ttl, correlation-id), so one kept per thread
    # gave later messages an earlier one's fields (tests/test_codec_fuzz.py).
    msg = proton.Message()
    try:
        msg.decode(data)
        serializer, has_body, body = _body_parts(msg)
        address = _optional_str(msg.address)
        reply_to = _optional_str(msg.reply_to)
        message_id = _id_value(msg.id)
        correlation_id = _id_value(msg.correlation_id)
        ttl_ms = cproton.pn_message_get_ttl(msg._msg)
        expiry_ms = cproton.pn_message_get_expiry_time(msg._msg)
        content_type = _content_type(msg)
    except CodecError:
        raise
    except RecursionError:
        raise CodecError("not an AMQP message: nested too deeply") from None
    except Exception as exc:  # proton and cffi raise many unrelated types
        raise CodecError(f"not an AMQP message: {type(exc).__name__}: {exc}") from None
    return _message.build(address, reply_to, message_id, correlation_id, ttl_ms,
                          expiry_ms, content_type, serializer, has_body, body,
                          _ser.loads_json)


def new_message_id():
    """The id the original driver gave a call: a uuid4 hex string."""
    return uuid.uuid4().hex


# ---- the fast path: Proton C through python-qpid-proton's cffi binding ----------------
# The functions above are the reference (proton.Message); these produce the same bytes
# and the same results with a fraction of the Python around each Proton call, as the C
# codec (_core) does in Cython. Each call takes a _Scratch from a free list instead of
# sharing one: a call can re-enter the codec (a finaliser run by the garbage collector
# while a body is built) and must not clobber the message the outer call is reading.

class _Scratch:
    __slots__ = ("msg", "buf", "cbuf", "cap")

    def __init__(self):
        self.msg = _lib.pn_message()
        if self.msg == _ffi.NULL:
            raise MemoryError()
        self._allocate(16384)

    def _allocate(self, cap):
        self.buf = bytearray(cap)
        self.cbuf = _ffi.from_buffer(self.buf)
        self.cap = cap

    def __del__(self):
        msg, self.msg = getattr(self, "msg", None), None
        if msg is not None and _lib is not None:
            _lib.pn_message_free(msg)

    def encode(self, non_durable):
        while True:
            size = _lib.pn_message_encode_py(self.msg, self.cbuf, self.cap)
            if size >= 0:
                data = _ffi.unpack(self.cbuf, size)
                if self.cap > (1 << 20):
                    self._allocate(16384)  # one huge message must not pin its buffer
                return _message.mark_non_durable(data) if non_durable else data
            if size != _lib.PN_OVERFLOW:
                raise CodecError(f"cannot encode AMQP message: [{size}]: "
                                 f"{_pn_message_error(self.msg)}")
            self._allocate(self.cap * 2)


_free_scratch = []


def _acquire():
    try:
        return _free_scratch.pop()
    except IndexError:
        return _Scratch()


def _release(scratch):
    if len(_free_scratch) < 8:
        _free_scratch.append(scratch)


def _pn_message_error(msg):
    return cproton.pn_error_text(_lib.pn_message_error(msg))


def _start(msg, address, serializer, data):
    """Reset the scratch message and give it its address and body (as _new_message:
    inferred, a JSON text as an amqp-value string, msgpack as a data section)."""
    if serializer == _ser.JSON:
        body = _ser.dumps_json(data)
    else:
        body = _ser.dumps_msgpack(data)
    _lib.pn_message_clear(msg)
    _lib.pn_message_set_inferred(msg, True)
    _lib.pn_message_set_address(msg, address.encode("utf-8"))
    section = _lib.pn_message_body(msg)
    if serializer == _ser.JSON:
        _lib.pn_data_put_string(section, (len(body), _ffi.from_buffer(body)))
    else:
        _lib.pn_message_set_content_type(msg, _ser.MSGPACK_CONTENT_TYPE.encode("ascii"))
        _lib.pn_data_put_binary(section, (len(body), _ffi.from_buffer(body)))


def _fast_encode_request(address, request, context, *, message_id=None, reply_to=None,
                         timeout=None, call_monitor_timeout=None, envelope=False,
                         serializer=_ser.JSON, now=None, non_durable=False):
    data = _request_body(address, request, context, message_id, reply_to, timeout,
                         call_monitor_timeout, envelope, serializer)
    scratch = _acquire()
    try:
        msg = scratch.msg
        _start(msg, address, serializer, data)
        if message_id is not None:
            cproton.pn_message_set_id(msg, message_id)
        if reply_to is not None:
            _lib.pn_message_set_reply_to(msg, reply_to.encode("utf-8"))
        if timeout:
            _lib.pn_message_set_ttl(msg, _ttl_ms(timeout))
            wall = time.time() if now is None else now
            _lib.pn_message_set_expiry_time(msg, int((wall + timeout) * 1000))
        return scratch.encode(non_durable)
    finally:
        _release(scratch)


def _fast_encode_notification(address, message, context, version=2.0, *,
                              serializer=_ser.JSON, non_durable=False):
    return _fast_encode_request(address, message, context, envelope=(version == 2.0),
                                serializer=serializer, non_durable=non_durable)


def _fast_encode_reply(address, correlation_id, response=None, failure=None, *,
                       serializer=_ser.JSON, non_durable=False):
    data = _reply_body(address, correlation_id, response, failure, serializer)
    scratch = _acquire()
    try:
        msg = scratch.msg
        _start(msg, address, serializer, data)
        cproton.pn_message_set_correlation_id(msg, correlation_id)
        return scratch.encode(non_durable)
    finally:
        _release(scratch)


def _fast_encode_heartbeat(address, correlation_id, ttl, *, non_durable=False):
    _check_heartbeat(address, correlation_id, ttl)
    scratch = _acquire()
    try:
        msg = scratch.msg
        _lib.pn_message_clear(msg)    # not inferred, no body: as proton.Message()
        _lib.pn_message_set_address(msg, address.encode("utf-8"))
        cproton.pn_message_set_correlation_id(msg, correlation_id)
        if ttl:
            _lib.pn_message_set_ttl(msg, _ttl_ms(ttl))
        return scratch.encode(non_durable)
    finally:
        _release(scratch)


def _raw_id(value):
    # As proton.Message.id / .correlation_id read it.
    if isinstance(value, tuple) and value[0] == proton.Data.UUID:
        value = uuid.UUID(bytes=value[1])
    return _id_value(value)


def _fast_decode(data, max_size=_message.DEFAULT_MAX_MESSAGE_SIZE):
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected bytes, not {type(data).__name__}")
    size = len(data)
    if size > max_size:
        raise CodecError(f"message of {size} bytes exceeds the limit of {max_size} bytes")
    if size == 0:
        raise CodecError("not an AMQP message: empty input")
    data = bytes(data)
    _check_sections(data)
    scratch = _acquire()
    try:
        msg = scratch.msg
        # pn_message_decode does not clear first: without this, fields absent from
        # this message would keep the previous message's values.
        _lib.pn_message_clear(msg)
        rc = _lib.pn_message_decode(msg, data, size)
        if rc != 0:
            raise CodecError(f"not an AMQP message: MessageException: [{rc}]: "
                             f"{_pn_message_error(msg)}")
        section = _lib.pn_message_body(msg)
        _lib.pn_data_rewind(section)
        kind = _lib.pn_data_type(section) if _lib.pn_data_next(section) else None
        if kind not in (None, _lib.PN_STRING, _lib.PN_BINARY, _lib.PN_NULL):
            # An unexpected body: the reference path says what is wrong with it.
            return _message_decode(data, max_size)
        try:
            content_type = cproton.pn_message_get_content_type(msg)
            address = cproton.pn_message_get_address(msg)
            reply_to = cproton.pn_message_get_reply_to(msg)
            message_id = _raw_id(cproton.pn_message_get_id(msg))
            correlation_id = _raw_id(cproton.pn_message_get_correlation_id(msg))
        except CodecError:
            raise
        except Exception as exc:  # cffi raises many unrelated types (UTF-8 errors)
            raise CodecError(f"not an AMQP message: {type(exc).__name__}: {exc}") from None
        ttl_ms = _lib.pn_message_get_ttl(msg)
        expiry_ms = _lib.pn_message_get_expiry_time(msg)
        serializer, has_body, body = None, False, None
        if kind == _lib.PN_STRING:
            if content_type in _ser.MSGPACK_CONTENT_TYPES:
                raise CodecError("msgpack content-type on a string (amqp-value) body")
            raw = _lib.pn_data_get_string(section)
            serializer, has_body = _ser.JSON, True
            body = _ser.loads_json(_ffi.unpack(raw.start, raw.size))
        elif kind == _lib.PN_BINARY:
            raw = _ffi.unpack(*_binary(section))
            has_body = True
            if content_type in _ser.MSGPACK_CONTENT_TYPES:
                serializer, body = _ser.MSGPACK, _ser.loads_msgpack(raw)
            elif content_type is None or content_type in _ser.JSON_CONTENT_TYPES:
                serializer, body = _ser.JSON, _ser.loads_json(raw)
            else:
                raise CodecError(f"unsupported content-type {content_type!r} for a "
                                 f"binary body")
    except RecursionError:
        raise CodecError("not an AMQP message: nested too deeply") from None
    finally:
        _release(scratch)
    return _message.build(address, reply_to, message_id, correlation_id, ttl_ms,
                          expiry_ms, content_type, serializer, has_body, body,
                          _ser.loads_json)


def _binary(section):
    raw = _lib.pn_data_get_binary(section)
    return raw.start, raw.size


def peek_reply(data):
    """(correlation-id, heartbeat?) of a message on the reply link, for the I/O thread to
    route it; the driver decodes it fully. Raises CodecError when the message cannot
    be read that far (its correlation-id is unknown). A heartbeat has no body, or an
    empty data section (RabbitMQ 3.x adds one to body-less messages)."""
    if _lib is None:
        message = proton.Message()
        try:
            message.decode(data)
        except Exception as exc:
            raise CodecError(f"not an AMQP message: {type(exc).__name__}: {exc}") from None
        return message.correlation_id, message.body is None or message.body == b""
    scratch = _acquire()
    try:
        msg = scratch.msg
        _lib.pn_message_clear(msg)
        rc = _lib.pn_message_decode(msg, data, len(data))
        if rc != 0:
            raise CodecError(f"not an AMQP message: [{rc}]: {_pn_message_error(msg)}")
        try:
            correlation_id = cproton.pn_message_get_correlation_id(msg)
        except Exception as exc:  # a string id that is not UTF-8
            raise CodecError(f"unreadable correlation-id: {type(exc).__name__}: "
                             f"{exc}") from None
        if isinstance(correlation_id, tuple) and correlation_id[0] == proton.Data.UUID:
            correlation_id = uuid.UUID(bytes=correlation_id[1])
        section = _lib.pn_message_body(msg)
        _lib.pn_data_rewind(section)
        if not _lib.pn_data_next(section):
            return correlation_id, True
        kind = _lib.pn_data_type(section)
        heartbeat = kind == _lib.PN_NULL or (
            kind == _lib.PN_BINARY and _lib.pn_data_get_binary(section).size == 0)
        return correlation_id, heartbeat
    finally:
        _release(scratch)


# The reference implementations stay reachable (tests compare the two paths).
_message_encode_request = encode_request
_message_encode_notification = encode_notification
_message_encode_reply = encode_reply
_message_encode_heartbeat = encode_heartbeat
_message_decode = decode
FAST = _lib is not None
if FAST:
    encode_request = _fast_encode_request
    encode_notification = _fast_encode_notification
    encode_reply = _fast_encode_reply
    encode_heartbeat = _fast_encode_heartbeat
    decode = _fast_decode
