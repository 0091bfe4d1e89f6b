# cython: language_level=3
"""fastamqp's C fast path: the message codec, straight on Proton C.

Twin of ``fastamqp._pure.codec`` (same functions, same bytes, same results, same
exceptions); the pure module is the reference. The JSON text comes from the same
``fastamqp.serializers`` functions, so the bodies cannot differ; what this module saves
is python-qpid-proton's per-field Python/cffi layer around pn_message_t.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from libc.string cimport strlen
from libc.stdint cimport uint64_t, int64_t

cimport fastamqp._proton as pn

import time as _time
import uuid as _uuid

from fastamqp import message as _message
from fastamqp import serializers as _ser
from fastamqp.exceptions import CodecError

IMPLEMENTATION = "c"

cdef object _JSON = _ser.JSON
cdef object _MSGPACK = _ser.MSGPACK
cdef object _dumps_json = _ser.dumps_json
cdef object _dumps_msgpack = _ser.dumps_msgpack
cdef object _loads_json = _ser.loads_json
cdef object _loads_msgpack = _ser.loads_msgpack
cdef object _MSGPACK_TYPES = _ser.MSGPACK_CONTENT_TYPES
cdef object _JSON_TYPES = _ser.JSON_CONTENT_TYPES
cdef bytes _MSGPACK_CONTENT_TYPE = _ser.MSGPACK_CONTENT_TYPE.encode("ascii")
cdef object _build = _message.build
cdef object _envelope = _message.envelope
cdef object _check_serializer = _ser.check_serializer
cdef object _UUID = _uuid.UUID
cdef object _uuid4 = _uuid.uuid4
cdef object _wall_time = _time.time
cdef Py_ssize_t _DEFAULT_MAX = _message.DEFAULT_MAX_MESSAGE_SIZE
cdef uint64_t _MAX_TTL_MS = _message.MAX_TTL_MS


cdef class _Scratch:
    """The pn_message_t and output buffer every codec call reuses.

    Codec calls hold the GIL from start to end and never call back into Python while
    the scratch message is half-built (bodies are serialized first), so one instance
    per process is race-free and saves a pn_message()/free pair per message.
    """
    cdef pn.pn_message_t *msg
    cdef char *buf
    cdef size_t cap

    def __cinit__(self):
        self.msg = pn.pn_message()
        self.cap = 16384
        self.buf = <char *>PyMem_Malloc(self.cap)
        if self.msg == NULL or self.buf == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.msg != NULL:
            pn.pn_message_free(self.msg)
        PyMem_Free(self.buf)

    cdef bytes encode(self):
        cdef size_t size
        cdef int rc
        cdef char *grown
        while True:
            size = self.cap
            rc = pn.pn_message_encode(self.msg, self.buf, &size)
            if rc == 0:
                out = PyBytes_FromStringAndSize(self.buf, size)
                if self.cap > (1 << 20):
                    self._shrink()
                return out
            if rc != pn.PN_OVERFLOW:
                raise CodecError(f"cannot encode AMQP message: {_pn_error(self.msg, rc)}")
            grown = <char *>PyMem_Realloc(self.buf, self.cap * 2)
            if grown == NULL:
                raise MemoryError()
            self.buf = grown
            self.cap *= 2

    cdef void _shrink(self):
        # One huge message must not pin its buffer for the life of the process.
        cdef char *small = <char *>PyMem_Realloc(self.buf, 16384)
        if small != NULL:
            self.buf = small
            self.cap = 16384


cdef _Scratch _scratch = _Scratch()


cdef str _pn_error(pn.pn_message_t *msg, int rc):
    cdef const char *text = pn.pn_error_text(pn.pn_message_error(msg))
    cdef const char *code = pn.pn_code(rc)
    if text != NULL and text[0] != 0:
        return f"{(<bytes>code).decode('ascii', 'replace')}: " \
               f"{(<bytes>text).decode('utf-8', 'replace')}"
    return (<bytes>code).decode("ascii", "replace")


cdef bytes _c_string(str name, object value):
    """UTF-8 bytes of a str for a NUL-terminated Proton field."""
    if not isinstance(value, str):
        raise CodecError(f"{name} must be a str, not {type(value).__name__}")
    cdef bytes raw = (<str>value).encode("utf-8")
    if strlen(PyBytes_AS_STRING(raw)) != <size_t>PyBytes_GET_SIZE(raw):
        raise CodecError(f"{name} contains a NUL character")
    return raw


cdef int _set_id(pn.pn_message_t *msg, str name, object value, bint correlation,
                 list keep) except -1:
    """Set message-id or correlation-id from str/bytes/int/UUID (AMQP message-id types).

    ``keep`` holds the bytes objects whose memory the atom points at until the
    message is encoded (Proton copies them into its own storage on set).
    """
    cdef pn.pn_atom_t atom
    cdef bytes raw
    cdef bytes uuid_bytes
    if isinstance(value, str):
        raw = _c_string(name, value)
        atom.type = pn.PN_STRING
        atom.u.as_bytes = pn.pn_bytes(PyBytes_GET_SIZE(raw), PyBytes_AS_STRING(raw))
        keep.append(raw)
    elif isinstance(value, bytes):
        raw = <bytes>value
        atom.type = pn.PN_BINARY
        atom.u.as_bytes = pn.pn_bytes(PyBytes_GET_SIZE(raw), PyBytes_AS_STRING(raw))
    elif isinstance(value, _UUID):
        uuid_bytes = value.bytes
        atom.type = pn.PN_UUID
        for i in range(16):
            atom.u.as_uuid.bytes[i] = uuid_bytes[i]
    elif isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 2 ** 64:
            raise CodecError(f"{name} {value} does not fit an AMQP ulong")
        atom.type = pn.PN_ULONG
        atom.u.as_ulong = <uint64_t>value
    else:
        raise CodecError(f"{name} must be str, bytes, int or UUID, "
                         f"not {type(value).__name__}")
    if correlation:
        pn.pn_message_set_correlation_id(msg, atom)
    else:
        pn.pn_message_set_id(msg, atom)
    return 0


cdef object _get_id(pn.pn_atom_t atom):
    if atom.type == pn.PN_STRING:
        return _utf8(atom.u.as_bytes, "message id")
    if atom.type == pn.PN_NULL or <int>atom.type == 0:
        return None
    if atom.type == pn.PN_BINARY:
        return PyBytes_FromStringAndSize(atom.u.as_bytes.start, atom.u.as_bytes.size)
    if atom.type == pn.PN_ULONG:
        return atom.u.as_ulong
    if atom.type == pn.PN_UUID:
        return _UUID(bytes=PyBytes_FromStringAndSize(atom.u.as_uuid.bytes, 16))
    raise CodecError(f"message id of unsupported type "
                     f"{(<bytes>pn.pn_type_name(atom.type)).decode('ascii')}")


cdef object _utf8(pn.pn_bytes_t b, str what):
    try:
        return PyUnicode_DecodeUTF8(b.start, b.size, NULL)
    except UnicodeDecodeError as exc:
        raise CodecError(f"{what} is not valid UTF-8: {exc}") from None


cdef object _opt_str(const char *value, str what):
    if value == NULL:
        return None
    return _utf8(pn.pn_bytes(strlen(value), value), what)


cdef inline uint64_t _ttl_ms(object seconds) except? 0:
    cdef double ms = <double>seconds * 1000.0
    if ms <= 0:
        return 0
    if ms >= <double>_MAX_TTL_MS:
        return _MAX_TTL_MS
    return <uint64_t>ms


cdef int _start(object address, object serializer, object data, list keep) except -1:
    """Reset the scratch message and give it its address and body."""
    cdef pn.pn_message_t *msg = _scratch.msg
    cdef bytes body
    cdef bytes addr = _c_string("address", address)
    if serializer is _JSON or serializer == _JSON:
        text = _dumps_json(data)
        body = (<str>text).encode("utf-8")
    else:
        body = _dumps_msgpack(data)
    pn.pn_message_clear(msg)
    # inferred: a binary body becomes a data section, as the original's
    # Message(inferred=True) did; a string body is an amqp-value either way.
    pn.pn_message_set_inferred(msg, True)
    pn.pn_message_set_address(msg, PyBytes_AS_STRING(addr))
    cdef pn.pn_data_t *section = pn.pn_message_body(msg)
    if serializer is _JSON or serializer == _JSON:
        pn.pn_data_put_string(section, pn.pn_bytes(PyBytes_GET_SIZE(body),
                                                   PyBytes_AS_STRING(body)))
    else:
        pn.pn_message_set_content_type(msg, _MSGPACK_CONTENT_TYPE)
        pn.pn_data_put_binary(section, pn.pn_bytes(PyBytes_GET_SIZE(body),
                                                   PyBytes_AS_STRING(body)))
    keep.append(body)
    return 0


def encode_request(address, request, context, *, message_id=None, reply_to=None,
                   timeout=None, call_monitor_timeout=None, bint envelope=False,
                   serializer=_ser.JSON, now=None):
    """RPC call or cast (``message_id``/``reply_to`` for calls), or a notification."""
    if serializer is not _JSON:
        _check_serializer(serializer)
    cdef list keep = []
    cdef bytes reply_raw
    if envelope:
        request = _envelope(_dumps_json(request))
    data = {"request": request, "context": context}
    if call_monitor_timeout is not None:
        data["call_monitor_timeout"] = call_monitor_timeout
    _start(address, serializer, data, keep)
    cdef pn.pn_message_t *msg = _scratch.msg
    if message_id is not None:
        _set_id(msg, "message_id", message_id, False, keep)
    if reply_to is not None:
        reply_raw = _c_string("reply_to", reply_to)
        pn.pn_message_set_reply_to(msg, PyBytes_AS_STRING(reply_raw))
    if timeout:
        pn.pn_message_set_ttl(msg, <pn.pn_millis_t>_ttl_ms(timeout))
        wall = _wall_time() if now is None else now
        # Wall-clock ms (the original used time.monotonic(): REFERENCE §3.9 #1).
        pn.pn_message_set_expiry_time(msg, <int64_t>((wall + timeout) * 1000))
    return _scratch.encode()


def encode_notification(address, message, context, version=2.0, *,
                        serializer=_ser.JSON):
    """A notification: enveloped for message version 2.0, as oslo's notifier sends."""
    return encode_request(address, message, context, envelope=(version == 2.0),
                          serializer=serializer)


def encode_reply(address, correlation_id, response=None, failure=None, *,
                 serializer=_ser.JSON):
    """RPC reply: ``failure`` is the serialized remote exception (a JSON string)."""
    if serializer is not _JSON:
        _check_serializer(serializer)
    if failure is not None and not isinstance(failure, str):
        raise CodecError("failure must be the serialized exception (str)")
    cdef list keep = []
    _start(address, serializer, {"failure": failure} if failure else {"response": response},
           keep)
    _set_id(_scratch.msg, "correlation_id", correlation_id, True, keep)
    return _scratch.encode()


def encode_heartbeat(address, correlation_id, ttl):
    """Call-monitor heartbeat: no body section, just correlation-id and ttl."""
    cdef list keep = []
    cdef bytes addr = _c_string("address", address)
    cdef pn.pn_message_t *msg = _scratch.msg
    pn.pn_message_clear(msg)
    pn.pn_message_set_address(msg, PyBytes_AS_STRING(addr))
    _set_id(msg, "correlation_id", correlation_id, True, keep)
    if ttl:
        pn.pn_message_set_ttl(msg, <pn.pn_millis_t>_ttl_ms(ttl))
    return _scratch.encode()


def decode(data, Py_ssize_t max_size=_DEFAULT_MAX):
    """Decode one AMQP message (the bytes of a transfer) into a DecodedMessage."""
    cdef const unsigned char[::1] view
    if isinstance(data, bytes):
        view = <bytes>data
    elif isinstance(data, (bytearray, memoryview)):
        try:
            view = data
        except (ValueError, TypeError, BufferError) as exc:
            raise CodecError(f"cannot read the input buffer: {exc}") from None
    else:
        raise CodecError(f"expected bytes, not {type(data).__name__}")
    cdef Py_ssize_t size = view.shape[0]
    if size > max_size:
        raise CodecError(f"message of {size} bytes exceeds the limit of {max_size} bytes")
    if size == 0:
        raise CodecError("not an AMQP message: empty input")
    cdef pn.pn_message_t *msg = _scratch.msg
    cdef int rc = pn.pn_message_decode(msg, <const char *>&view[0], <size_t>size)
    if rc != 0:
        raise CodecError(f"not an AMQP message: {_pn_error(msg, rc)}")

    content_type = _opt_str(pn.pn_message_get_content_type(msg), "content-type")
    address = _opt_str(pn.pn_message_get_address(msg), "to address")
    reply_to = _opt_str(pn.pn_message_get_reply_to(msg), "reply-to address")
    message_id = _get_id(pn.pn_message_get_id(msg))
    correlation_id = _get_id(pn.pn_message_get_correlation_id(msg))
    ttl_ms = pn.pn_message_get_ttl(msg)
    expiry_ms = pn.pn_message_get_expiry_time(msg)

    cdef pn.pn_data_t *section = pn.pn_message_body(msg)
    cdef pn.pn_type_t kind
    cdef pn.pn_bytes_t raw
    serializer = None
    body = None
    has_body = False
    pn.pn_data_rewind(section)
    if pn.pn_data_next(section):
        has_body = True
        kind = pn.pn_data_type(section)
        if kind == pn.PN_STRING:
            if content_type in _MSGPACK_TYPES:
                raise CodecError("msgpack content-type on a string (amqp-value) body")
            raw = pn.pn_data_get_string(section)
            serializer = _JSON
            body = _loads_json(PyBytes_FromStringAndSize(raw.start, raw.size))
        elif kind == pn.PN_BINARY:
            raw = pn.pn_data_get_binary(section)
            if content_type in _MSGPACK_TYPES:
                serializer = _MSGPACK
                body = _loads_msgpack(PyBytes_FromStringAndSize(raw.start, raw.size))
            elif content_type is None or content_type in _JSON_TYPES:
                serializer = _JSON
                body = _loads_json(PyBytes_FromStringAndSize(raw.start, raw.size))
            else:
                raise CodecError(f"unsupported content-type {content_type!r} "
                                 f"for a binary body")
        elif kind == pn.PN_NULL:
            has_body = False
        elif kind == pn.PN_LIST and pn.pn_message_is_inferred(msg):
            raise CodecError("wrong body section: amqp-sequence, expected amqp-value "
                             "(JSON text) or data")
        else:
            raise CodecError(f"wrong body: amqp-value holds "
                             f"{(<bytes>pn.pn_type_name(kind)).decode('ascii')}, "
                             f"expected a string (JSON text)")
    return _build(address, reply_to, message_id, correlation_id, ttl_ms, expiry_ms,
                  content_type, serializer, has_body, body, _loads_json)


def new_message_id():
    """The id the original driver gave a call: a uuid4 hex string."""
    return _uuid4().hex
