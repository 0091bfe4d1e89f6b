# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, infer_types=False
"""fastamqp._jsoncodec: a JSON encoder/decoder in C, byte-identical to the stdlib json module.

Every oslo.messaging body is the JSON text of a dict, so JSON is most of the codec's
cost. The C engine and the pure-Python engine (stdlib json) must put the same bytes on
the wire, so this module is not "a JSON library": its contract is the stdlib's output.

* dumps(obj, default) == json.dumps(obj, default=default).encode("ascii"), always.
  Exact dict/list/tuple/str/int/float/bool/None are encoded here; on meeting anything
  else (subclasses such as IntEnum or OrderedDict, objects needing ``default``, a
  nesting deeper than the fast path goes, or any error) the whole document is encoded
  again by json.JSONEncoder, so output and exceptions are the stdlib's by construction.
* loads(buf, size) == json.loads(buf[:size].decode("utf-8")), for every input the
  stdlib accepts; every input it rejects (and nesting deeper than MAX_DECODE_DEPTH)
  raises CodecError naming the cause and the byte offset. The parser is iterative, so
  hostile nesting cannot exhaust the C stack.

The Python-level json_dumps/json_loads exist for tests and benchmarks.
"""
from cpython.object cimport PyObject, PyTypeObject
from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memcpy, memcmp, strlen

import json as _stdlib_json
from json import decoder as _stdlib_decoder

from fastamqp.exceptions import CodecError

# Raw-pointer declarations: the hot loops handle borrowed references themselves,
# which Cython's object-typed declarations would wrap in incref/decref pairs.
cdef extern from "Python.h":

    PyTypeObject T_str "PyUnicode_Type"
    PyTypeObject T_int "PyLong_Type"
    PyTypeObject T_float "PyFloat_Type"
    PyTypeObject T_list "PyList_Type"
    PyTypeObject T_tuple "PyTuple_Type"
    PyTypeObject T_dict "PyDict_Type"
    PyObject *O_None "Py_None"
    PyObject *O_True "Py_True"
    PyObject *O_False "Py_False"
    PyObject *E_ValueError "PyExc_ValueError"

    PyTypeObject *TYPE "Py_TYPE"(PyObject *o)
    void INCREF "Py_INCREF"(PyObject *o)
    void DECREF "Py_DECREF"(PyObject *o)
    void XDECREF "Py_XDECREF"(PyObject *o)

    Py_ssize_t List_SIZE "PyList_GET_SIZE"(PyObject *o)
    PyObject *List_ITEM "PyList_GET_ITEM"(PyObject *o, Py_ssize_t i)
    Py_ssize_t Tuple_SIZE "PyTuple_GET_SIZE"(PyObject *o)
    PyObject *Tuple_ITEM "PyTuple_GET_ITEM"(PyObject *o, Py_ssize_t i)
    Py_ssize_t Dict_SIZE "PyDict_GET_SIZE"(PyObject *o)
    int Dict_Next "PyDict_Next"(PyObject *d, Py_ssize_t *pos, PyObject **k, PyObject **v)
    long long Long_AsLongLongAndOverflow "PyLong_AsLongLongAndOverflow"(PyObject *o, int *overflow)
    double Float_AS_DOUBLE "PyFloat_AS_DOUBLE"(PyObject *o)
    PyObject *Object_Repr "PyObject_Repr"(PyObject *o)

    Py_ssize_t Unicode_LENGTH "PyUnicode_GET_LENGTH"(PyObject *o)
    int Unicode_KIND "PyUnicode_KIND"(PyObject *o)
    void *Unicode_DATA "PyUnicode_DATA"(PyObject *o)
    int Unicode_IS_ASCII "PyUnicode_IS_ASCII"(PyObject *o)
    int KIND_4BYTE "PyUnicode_4BYTE_KIND"
    int KIND_2BYTE "PyUnicode_2BYTE_KIND"
    PyObject *Unicode_New "PyUnicode_New"(Py_ssize_t size, uint32_t maxchar)
    PyObject *Unicode_FromKindAndData "PyUnicode_FromKindAndData"(int kind, const void *buf, Py_ssize_t size)
    PyObject *Unicode_DecodeUTF8 "PyUnicode_DecodeUTF8"(const char *s, Py_ssize_t size, const char *errors)

    PyObject *Long_FromLongLong "PyLong_FromLongLong"(long long v)
    PyObject *Long_FromString "PyLong_FromString"(const char *s, char **pend, int base)
    PyObject *Float_FromDouble "PyFloat_FromDouble"(double v)
    PyObject *Dict_New "PyDict_New"()
    int Dict_SetItem "PyDict_SetItem"(PyObject *d, PyObject *k, PyObject *v)
    PyObject *List_New "PyList_New"(Py_ssize_t size)
    int List_Append "PyList_Append"(PyObject *l, PyObject *v)
    PyObject *Bytes_FromStringAndSize "PyBytes_FromStringAndSize"(const char *s, Py_ssize_t n)

    char *PyOS_double_to_string(double val, char format_code, int precision, int flags, int *ptype)
    double PyOS_string_to_double(const char *s, char **endptr, PyObject *overflow_exception)
    int Py_DTSF_ADD_DOT_0

    PyObject *Err_Occurred "PyErr_Occurred"()
    int Err_ExceptionMatches "PyErr_ExceptionMatches"(PyObject *exc)
    void Err_Clear "PyErr_Clear"()
    PyObject *Err_NoMemory "PyErr_NoMemory"()

    void *PyMem_Malloc(size_t n)
    void *PyMem_Realloc(void *p, size_t n)
    void PyMem_Free(void *p)
    Py_ssize_t PY_SSIZE_T_MAX

# Word-at-a-time scans and small helpers that Cython cannot express as directly.
cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <math.h>

    #if PY_VERSION_HEX < 0x030C0000
    /* Legacy (wstr) strings still exist before 3.12; exact str from C code can be one. */
    #define FA_UNICODE_READY(o) PyUnicode_READY(o)
    #else
    #define FA_UNICODE_READY(o) 0
    #endif

    #define FA_ONES UINT64_C(0x0101010101010101)
    #define FA_HIGH UINT64_C(0x8080808080808080)
    /* Non-zero iff some byte of x is < n (n <= 0x80); exact as an "any" test. */
    #define FA_HAS_LESS(x, n) (((x) - FA_ONES * (n)) & ~(x) & FA_HIGH)
    #define FA_HAS_BYTE(x, b) FA_HAS_LESS((x) ^ (FA_ONES * (b)), 1)

    /* Bytes a JSON string literal may carry verbatim when decoding: 0x20..0x7f except
       '"' and '\\'. Non-ASCII stops the run so the caller validates UTF-8. */
    static inline Py_ssize_t fa_dec_plain_run(const unsigned char *p, Py_ssize_t n) {
        Py_ssize_t i = 0;
        while (i + 8 <= n) {
            uint64_t x;
            memcpy(&x, p + i, 8);
            if (FA_HAS_LESS(x, 0x20) | FA_HAS_BYTE(x, '"') | FA_HAS_BYTE(x, '\\\\')
                    | (x & FA_HIGH))
                break;
            i += 8;
        }
        while (i < n) {
            unsigned char c = p[i];
            if (c < 0x20 || c == '"' || c == '\\\\' || c >= 0x80)
                break;
            i++;
        }
        return i;
    }

    /* Bytes json.dumps(ensure_ascii=True) copies verbatim: 0x20..0x7e except '"' and
       '\\'. (x + 1) sets the high bit of a 0x7f byte; a carry out of a byte >= 0x80 can
       only add false positives to a word already flagged by (x & FA_HIGH). */
    static inline Py_ssize_t fa_enc_plain_run(const unsigned char *p, Py_ssize_t n) {
        Py_ssize_t i = 0;
        while (i + 8 <= n) {
            uint64_t x;
            memcpy(&x, p + i, 8);
            if (FA_HAS_LESS(x, 0x20) | FA_HAS_BYTE(x, '"') | FA_HAS_BYTE(x, '\\\\')
                    | ((x | (x + FA_ONES)) & FA_HIGH))
                break;
            i += 8;
        }
        while (i < n) {
            unsigned char c = p[i];
            if (c < 0x20 || c == '"' || c == '\\\\' || c >= 0x7f)
                break;
            i++;
        }
        return i;
    }

    /* Length of the well-formed UTF-8 sequence at p (the rules of Python's strict
       decoder: no overlongs, no surrogates, nothing above U+10FFFF), or 0. */
    static inline int fa_utf8_len(const unsigned char *p, Py_ssize_t avail) {
        unsigned char c = p[0], lo = 0x80, hi = 0xBF;
        if (c < 0x80) return 1;
        if (c < 0xC2) return 0;
        if (c < 0xE0) {
            return (avail >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
        }
        if (c < 0xF0) {
            if (c == 0xE0) lo = 0xA0;
            else if (c == 0xED) hi = 0x9F;
            return (avail >= 3 && p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80) ? 3 : 0;
        }
        if (c < 0xF5) {
            if (c == 0xF0) lo = 0x90;
            else if (c == 0xF4) hi = 0x8F;
            return (avail >= 4 && p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80
                    && (p[3] & 0xC0) == 0x80) ? 4 : 0;
        }
        return 0;
    }

    /* The code point of a sequence fa_utf8_len accepted with length len. */
    static inline Py_UCS4 fa_utf8_decode(const unsigned char *p, int len) {
        switch (len) {
        case 2: return ((Py_UCS4)(p[0] & 0x1F) << 6) | (p[1] & 0x3F);
        case 3: return ((Py_UCS4)(p[0] & 0x0F) << 12) | ((Py_UCS4)(p[1] & 0x3F) << 6)
                       | (p[2] & 0x3F);
        case 4: return ((Py_UCS4)(p[0] & 0x07) << 18) | ((Py_UCS4)(p[1] & 0x3F) << 12)
                       | ((Py_UCS4)(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
        default: return p[0];
        }
    }

    static inline int fa_isnan(double d) { return isnan(d); }
    static inline int fa_isinf(double d) { return isinf(d); }
    """
    Py_ssize_t fa_dec_plain_run(const unsigned char *p, Py_ssize_t n) noexcept
    Py_ssize_t fa_enc_plain_run(const unsigned char *p, Py_ssize_t n) noexcept
    int fa_utf8_len(const unsigned char *p, Py_ssize_t avail) noexcept
    uint32_t fa_utf8_decode(const unsigned char *p, int len) noexcept
    int fa_isnan(double d) noexcept
    int fa_isinf(double d) noexcept
    int FA_UNICODE_READY(PyObject *o)


cdef enum:
    # Deeper documents leave the fast path for json.JSONEncoder, which applies the
    # interpreter's recursion limit and circular-reference check exactly as json.dumps
    # does. A reference cycle is exact-typed all the way down, so it lands here too.
    MAX_ENCODE_DEPTH = 200
    # json.loads raises RecursionError near 1000 levels; we refuse past this many.
    MAX_DECODE_DEPTH = 1000
    # enc_* result meaning "not handled exactly here: let json.JSONEncoder do it all".
    FALLBACK = 1
    INLINE_FRAMES = 32
    STRING_STACK_CHARS = 256
    NUMBER_STACK_CHARS = 64
    CLOSE_OBJECT = 0x7D
    CLOSE_ARRAY = 0x5D

cdef const char *HEX = b"0123456789abcdef"

# ---------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------

cdef struct Buf:
    char *data
    Py_ssize_t len
    Py_ssize_t cap


cdef int buf_grow(Buf *b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need, cap
    cdef char *p
    if extra > PY_SSIZE_T_MAX - b.len:
        raise MemoryError()
    need = b.len + extra
    cap = b.cap if b.cap >= 512 else 512
    while cap < need:
        if cap > PY_SSIZE_T_MAX // 2:
            cap = need
            break
        cap *= 2
    p = <char *>PyMem_Realloc(b.data, <size_t>cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef inline int buf_reserve(Buf *b, Py_ssize_t extra) except -1:
    if b.cap - b.len < extra:
        return buf_grow(b, extra)
    return 0


cdef inline int buf_put(Buf *b, const char *s, Py_ssize_t n) except -1:
    buf_reserve(b, n)
    memcpy(b.data + b.len, s, <size_t>n)
    b.len += n
    return 0


cdef inline int buf_putc(Buf *b, char c) except -1:
    buf_reserve(b, 1)
    b.data[b.len] = c
    b.len += 1
    return 0


cdef inline Py_ssize_t put_u4(char *out, uint32_t c) noexcept:
    out[0] = c'\\'
    out[1] = c'u'
    out[2] = HEX[(c >> 12) & 0xF]
    out[3] = HEX[(c >> 8) & 0xF]
    out[4] = HEX[(c >> 4) & 0xF]
    out[5] = HEX[c & 0xF]
    return 6


cdef inline Py_ssize_t put_escape(char *out, uint32_t c) noexcept:
    """Write the ensure_ascii escape of c (at most 12 bytes); return its length."""
    if c == 0x22 or c == 0x5C:
        out[0] = c'\\'
        out[1] = <char>c
        return 2
    if c == 0x0A:
        out[0] = c'\\'; out[1] = c'n'
        return 2
    if c == 0x0D:
        out[0] = c'\\'; out[1] = c'r'
        return 2
    if c == 0x09:
        out[0] = c'\\'; out[1] = c't'
        return 2
    if c == 0x08:
        out[0] = c'\\'; out[1] = c'b'
        return 2
    if c == 0x0C:
        out[0] = c'\\'; out[1] = c'f'
        return 2
    if c >= 0x10000:
        c -= 0x10000
        put_u4(out, 0xD800 | (c >> 10))
        put_u4(out + 6, 0xDC00 | (c & 0x3FF))
        return 12
    return put_u4(out, c)


cdef int enc_str(Buf *b, PyObject *s) except -1:
    cdef Py_ssize_t n, i, run, chunk_end
    cdef int kind
    cdef const unsigned char *p1
    cdef const uint16_t *p2
    cdef const uint32_t *p4
    cdef uint32_t c
    cdef char *out
    if FA_UNICODE_READY(s) < 0:
        return -1
    n = Unicode_LENGTH(s)
    kind = Unicode_KIND(s)
    buf_reserve(b, n + 2)
    b.data[b.len] = c'"'
    b.len += 1
    if kind == 1:
        # ASCII and Latin-1: copy verbatim runs, escape the rest (at most 6 bytes each).
        p1 = <const unsigned char *>Unicode_DATA(s)
        i = 0
        while i < n:
            run = fa_enc_plain_run(p1 + i, n - i)
            if run:
                buf_put(b, <const char *>(p1 + i), run)
                i += run
                if i >= n:
                    break
            buf_reserve(b, 6)
            b.len += put_escape(b.data + b.len, p1[i])
            i += 1
    else:
        # Wider strings are rarely long; escape a chunk at a time into reserved room.
        p2 = <const uint16_t *>Unicode_DATA(s)
        p4 = <const uint32_t *>Unicode_DATA(s)
        i = 0
        while i < n:
            chunk_end = i + 1024 if n - i > 1024 else n
            buf_reserve(b, (chunk_end - i) * 12)
            out = b.data + b.len
            while i < chunk_end:
                c = p2[i] if kind == KIND_2BYTE else p4[i]
                if 0x20 <= c <= 0x7E and c != 0x22 and c != 0x5C:
                    out[0] = <char>c
                    out += 1
                else:
                    out += put_escape(out, c)
                i += 1
            b.len = out - b.data
    buf_putc(b, c'"')
    return 0


cdef int enc_int(Buf *b, PyObject *o) except -1:
    cdef int overflow = 0
    cdef long long v = Long_AsLongLongAndOverflow(o, &overflow)
    cdef unsigned long long u
    cdef char tmp[24]
    cdef int k = 24
    cdef PyObject *text
    if overflow == 0:
        if v == -1 and Err_Occurred() != NULL:
            return -1
        u = <unsigned long long>(-(v + 1)) + 1 if v < 0 else <unsigned long long>v
        while True:
            k -= 1
            tmp[k] = <char>(c'0' + u % 10)
            u //= 10
            if u == 0:
                break
        if v < 0:
            k -= 1
            tmp[k] = c'-'
        return buf_put(b, tmp + k, 24 - k)
    # Big ints: int.__repr__ itself, so the digit limit (ValueError) matches the stdlib.
    text = Object_Repr(o)
    if text == NULL:
        return -1
    try:
        buf_put(b, <const char *>Unicode_DATA(text), Unicode_LENGTH(text))
    finally:
        DECREF(text)
    return 0


cdef int enc_float(Buf *b, PyObject *o) except -1:
    cdef double d = Float_AS_DOUBLE(o)
    cdef char *text
    if fa_isnan(d):
        return buf_put(b, "NaN", 3)
    if fa_isinf(d):
        if d > 0:
            return buf_put(b, "Infinity", 8)
        return buf_put(b, "-Infinity", 9)
    # float.__repr__ is exactly this call.
    text = PyOS_double_to_string(d, c'r', 0, Py_DTSF_ADD_DOT_0, NULL)
    if text == NULL:
        return -1
    try:
        buf_put(b, text, <Py_ssize_t>strlen(text))
    finally:
        PyMem_Free(text)
    return 0


cdef int enc_dict(Buf *b, PyObject *d, int depth) except -1:
    cdef Py_ssize_t pos = 0
    cdef PyObject *k
    cdef PyObject *v
    cdef PyTypeObject *kt
    cdef bint first = True
    cdef int r
    if Dict_SIZE(d) == 0:
        return buf_put(b, "{}", 2)
    if depth >= MAX_ENCODE_DEPTH:
        return FALLBACK
    buf_putc(b, c'{')
    while Dict_Next(d, &pos, &k, &v):
        if not first:
            buf_put(b, ", ", 2)
        first = False
        kt = TYPE(k)
        # The key conversions of json's encoder, for exact types only.
        if kt == &T_str:
            enc_str(b, k)
        elif k == O_None:
            buf_put(b, "\"null\"", 6)
        elif k == O_True:
            buf_put(b, "\"true\"", 6)
        elif k == O_False:
            buf_put(b, "\"false\"", 7)
        elif kt == &T_int:
            buf_putc(b, c'"')
            enc_int(b, k)
            buf_putc(b, c'"')
        elif kt == &T_float:
            buf_putc(b, c'"')
            enc_float(b, k)
            buf_putc(b, c'"')
        else:
            return FALLBACK
        buf_put(b, ": ", 2)
        r = enc_value(b, v, depth + 1)
        if r:
            return r
    buf_putc(b, c'}')
    return 0


cdef int enc_seq(Buf *b, PyObject *seq, bint is_list, int depth) except -1:
    cdef Py_ssize_t i
    cdef int r
    cdef Py_ssize_t n = List_SIZE(seq) if is_list else Tuple_SIZE(seq)
    if n == 0:
        return buf_put(b, "[]", 2)
    if depth >= MAX_ENCODE_DEPTH:
        return FALLBACK
    buf_putc(b, c'[')
    i = 0
    # No Python code runs while encoding exact types, so the sequence cannot change
    # under us; re-reading the size is only a guard.
    while i < (List_SIZE(seq) if is_list else n):
        if i:
            buf_put(b, ", ", 2)
        r = enc_value(b, List_ITEM(seq, i) if is_list else Tuple_ITEM(seq, i), depth + 1)
        if r:
            return r
        i += 1
    buf_putc(b, c']')
    return 0


cdef int enc_value(Buf *b, PyObject *o, int depth) except -1:
    cdef PyTypeObject *t = TYPE(o)
    if t == &T_str:
        return enc_str(b, o)
    if t == &T_dict:
        return enc_dict(b, o, depth)
    if t == &T_int:
        return enc_int(b, o)
    if o == O_None:
        return buf_put(b, "null", 4)
    if o == O_True:
        return buf_put(b, "true", 4)
    if o == O_False:
        return buf_put(b, "false", 5)
    if t == &T_float:
        return enc_float(b, o)
    if t == &T_list:
        return enc_seq(b, o, True, depth)
    if t == &T_tuple:
        return enc_seq(b, o, False, depth)
    return FALLBACK


cdef bytes stdlib_dumps(object obj, object default):
    # What json.dumps(obj, default=default) does with default arguments otherwise.
    return _stdlib_json.JSONEncoder(default=default).encode(obj).encode("ascii")


cdef bytes dumps(object obj, object default):
    cdef Buf b
    cdef int r
    b.data = NULL
    b.len = 0
    b.cap = 0
    try:
        try:
            r = enc_value(&b, <PyObject *>obj, 0)
        except MemoryError:
            raise
        except Exception:
            # e.g. int.__repr__'s digit limit: the stdlib raises it, with its traceback.
            r = FALLBACK
        if r == 0:
            return b.data[:b.len]
    finally:
        PyMem_Free(b.data)
    return stdlib_dumps(obj, default)


def json_dumps(obj, default=None):
    """json.dumps(obj, default=default).encode("ascii"), computed in C where possible."""
    return dumps(obj, default)

# ---------------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------------

# json.loads returns these very objects for NaN/Infinity/-Infinity.
cdef object NAN_OBJ = _stdlib_decoder.NaN
cdef object POSINF_OBJ = _stdlib_decoder.PosInf
cdef object NEGINF_OBJ = _stdlib_decoder.NegInf


cdef struct Parser:
    const unsigned char *s
    Py_ssize_t n
    Py_ssize_t pos
    # Syntax errors are reported here (no Python exception): the message and offset.
    const char *err
    Py_ssize_t err_pos


cdef struct Frame:
    PyObject *container   # owned
    PyObject *key         # owned; a dict's key waiting for its value
    bint is_dict


cdef struct Stack:
    Frame *frames
    Py_ssize_t depth
    Py_ssize_t cap
    Frame inline_frames[INLINE_FRAMES]


cdef inline PyObject *fail(Parser *st, const char *msg, Py_ssize_t pos) noexcept:
    st.err = msg
    st.err_pos = pos
    return NULL


cdef inline void skip_ws(Parser *st) noexcept:
    cdef Py_ssize_t i = st.pos
    cdef unsigned char c
    while i < st.n:
        c = st.s[i]
        if c != c' ' and c != c'\n' and c != c'\r' and c != c'\t':
            break
        i += 1
    st.pos = i


cdef inline int hex4(const unsigned char *p, uint32_t *out) noexcept:
    cdef uint32_t v = 0
    cdef unsigned char c
    cdef int k
    for k in range(4):
        c = p[k]
        if c'0' <= c <= c'9':
            v = (v << 4) | (c - c'0')
        elif c'a' <= c <= c'f':
            v = (v << 4) | (c - c'a' + 10)
        elif c'A' <= c <= c'F':
            v = (v << 4) | (c - c'A' + 10)
        else:
            return 0
    out[0] = v
    return 1


cdef PyObject *decode_escaped(Parser *st, Py_ssize_t start, Py_ssize_t end) noexcept:
    """The str of the string literal body s[start:end], which has backslash escapes and
    was already checked for UTF-8 and control characters."""
    cdef const unsigned char *s = st.s
    cdef uint32_t stack_buf[STRING_STACK_CHARS]
    cdef uint32_t *out = stack_buf
    cdef Py_ssize_t i = start, j = 0
    cdef uint32_t cp, lo
    cdef unsigned char c
    cdef int L
    cdef PyObject *r = NULL
    if end - start > STRING_STACK_CHARS:
        out = <uint32_t *>PyMem_Malloc(<size_t>(end - start) * sizeof(uint32_t))
        if out == NULL:
            Err_NoMemory()
            return NULL
    while i < end:
        c = s[i]
        if c == c'\\':
            # The scan guaranteed a byte after the backslash before the closing quote.
            c = s[i + 1]
            if c == c'u':
                if end - i < 6 or not hex4(s + i + 2, &cp):
                    fail(st, "invalid \\uXXXX escape", i)
                    break
                i += 6
                # A high surrogate joins a following escaped low surrogate (as json does);
                # any other surrogate stays a lone code point.
                if (0xD800 <= cp <= 0xDBFF and end - i >= 6 and s[i] == c'\\'
                        and s[i + 1] == c'u' and hex4(s + i + 2, &lo)
                        and 0xDC00 <= lo <= 0xDFFF):
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                    i += 6
            else:
                if c == c'"' or c == c'\\' or c == c'/':
                    cp = c
                elif c == c'n':
                    cp = 0x0A
                elif c == c't':
                    cp = 0x09
                elif c == c'r':
                    cp = 0x0D
                elif c == c'b':
                    cp = 0x08
                elif c == c'f':
                    cp = 0x0C
                else:
                    fail(st, "invalid \\escape", i)
                    break
                i += 2
        elif c < 0x80:
            cp = c
            i += 1
        else:
            L = fa_utf8_len(s + i, end - i)
            cp = fa_utf8_decode(s + i, L)
            i += L
        out[j] = cp
        j += 1
    else:
        r = Unicode_FromKindAndData(KIND_4BYTE, out, j)
    if out != stack_buf:
        PyMem_Free(out)
    return r


cdef PyObject *parse_string(Parser *st) noexcept:
    """Parse the string literal whose opening quote is at st.pos."""
    cdef const unsigned char *s = st.s
    cdef Py_ssize_t n = st.n
    cdef Py_ssize_t start = st.pos + 1
    cdef Py_ssize_t i = start
    cdef bint escapes = False, nonascii = False
    cdef unsigned char c
    cdef int L
    cdef PyObject *r
    # First pass: find the closing quote, validate UTF-8, reject control characters.
    while True:
        if i < n:
            i += fa_dec_plain_run(s + i, n - i)
        if i >= n:
            return fail(st, "unterminated string starting", start - 1)
        c = s[i]
        if c == c'"':
            break
        if c == c'\\':
            if i + 1 >= n:
                return fail(st, "unterminated string starting", start - 1)
            c = s[i + 1]
            if not (c == c'"' or c == c'\\' or c == c'/' or c == c'b' or c == c'f'
                    or c == c'n' or c == c'r' or c == c't' or c == c'u'):
                return fail(st, "invalid \\escape", i)
            escapes = True
            i += 2
        elif c < 0x20:
            return fail(st, "invalid control character in string", i)
        else:
            L = fa_utf8_len(s + i, n - i)
            if L == 0:
                return fail(st, "invalid UTF-8", i)
            nonascii = True
            i += L
    st.pos = i + 1
    if escapes:
        return decode_escaped(st, start, i)
    if nonascii:
        return Unicode_DecodeUTF8(<const char *>(s + start), i - start, NULL)
    r = Unicode_New(i - start, 127)
    if r != NULL:
        memcpy(Unicode_DATA(r), s + start, <size_t>(i - start))
    return r


cdef inline bint is_digit(unsigned char c) noexcept:
    return c'0' <= c <= c'9'


cdef PyObject *parse_number(Parser *st) noexcept:
    """Parse -?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][-+]?[0-9]+)? at st.pos, as json does:
    int(text) without fraction or exponent, float(text) with one."""
    cdef const unsigned char *s = st.s
    cdef Py_ssize_t n = st.n
    cdef Py_ssize_t start = st.pos, i = st.pos, digits_start, length
    cdef bint is_float = False
    cdef long long v
    cdef char stack_text[NUMBER_STACK_CHARS]
    cdef char *text
    cdef double d
    cdef PyObject *r
    if s[i] == c'-':
        i += 1
    digits_start = i
    if i >= n or not is_digit(s[i]):
        return fail(st, "expecting value", start)
    if s[i] == c'0':
        i += 1
    else:
        while i < n and is_digit(s[i]):
            i += 1
    if i < n and s[i] == c'.':
        i += 1
        if i >= n or not is_digit(s[i]):
            return fail(st, "invalid number", start)
        while i < n and is_digit(s[i]):
            i += 1
        is_float = True
    if i < n and (s[i] == c'e' or s[i] == c'E'):
        i += 1
        if i < n and (s[i] == c'+' or s[i] == c'-'):
            i += 1
        if i >= n or not is_digit(s[i]):
            return fail(st, "invalid number", start)
        while i < n and is_digit(s[i]):
            i += 1
        is_float = True
    st.pos = i
    if not is_float and i - digits_start <= 18:
        v = 0
        while digits_start < i:
            v = v * 10 + (s[digits_start] - c'0')
            digits_start += 1
        return Long_FromLongLong(-v if s[start] == c'-' else v)
    # The conversion functions want a NUL-terminated copy (and must not read past size).
    length = i - start
    text = stack_text
    if length >= NUMBER_STACK_CHARS:
        text = <char *>PyMem_Malloc(<size_t>length + 1)
        if text == NULL:
            return Err_NoMemory()
    memcpy(text, s + start, <size_t>length)
    text[length] = 0
    if is_float:
        # float(text) is exactly this (correctly rounded; overflow gives +-inf).
        d = PyOS_string_to_double(text, NULL, NULL)
        if d == -1.0 and Err_Occurred() != NULL:
            r = NULL
        else:
            r = Float_FromDouble(d)
    else:
        r = Long_FromString(text, NULL, 10)
        if r == NULL and Err_ExceptionMatches(E_ValueError):
            # int()'s digit limit (sys.set_int_max_str_digits): json.loads fails too.
            Err_Clear()
            fail(st, "integer literal exceeds the int digit limit", start)
    if text != stack_text:
        PyMem_Free(text)
    return r


cdef inline bint match(Parser *st, const char *word, Py_ssize_t len) noexcept:
    if st.n - st.pos >= len and memcmp(st.s + st.pos, word, <size_t>len) == 0:
        st.pos += len
        return True
    return False


cdef inline PyObject *new_ref(object o) noexcept:
    INCREF(<PyObject *>o)
    return <PyObject *>o


cdef PyObject *parse_scalar(Parser *st) noexcept:
    cdef unsigned char c = st.s[st.pos]
    if c == c'"':
        return parse_string(st)
    if is_digit(c):
        return parse_number(st)
    if c == c'-':
        if st.pos + 1 < st.n and st.s[st.pos + 1] == c'I':
            if match(st, "-Infinity", 9):
                return new_ref(NEGINF_OBJ)
            return fail(st, "expecting value", st.pos)
        return parse_number(st)
    if c == c'n' and match(st, "null", 4):
        INCREF(O_None)
        return O_None
    if c == c't' and match(st, "true", 4):
        INCREF(O_True)
        return O_True
    if c == c'f' and match(st, "false", 5):
        INCREF(O_False)
        return O_False
    if c == c'N' and match(st, "NaN", 3):
        return new_ref(NAN_OBJ)
    if c == c'I' and match(st, "Infinity", 8):
        return new_ref(POSINF_OBJ)
    return fail(st, "expecting value", st.pos)


cdef int parse_key(Parser *st, Frame *f) noexcept:
    """Parse `"key" :` (with surrounding whitespace) into f.key; 0, or -1 on error."""
    skip_ws(st)
    if st.pos >= st.n or st.s[st.pos] != c'"':
        fail(st, "expecting property name enclosed in double quotes", st.pos)
        return -1
    f.key = parse_string(st)
    if f.key == NULL:
        return -1
    skip_ws(st)
    if st.pos >= st.n or st.s[st.pos] != c':':
        fail(st, "expecting ':' delimiter", st.pos)
        return -1
    st.pos += 1
    return 0


cdef int push(Stack *stk, PyObject *container, bint is_dict) noexcept:
    cdef Frame *frames
    if stk.depth == stk.cap:
        if stk.frames == stk.inline_frames:
            frames = <Frame *>PyMem_Malloc(<size_t>(stk.cap * 2) * sizeof(Frame))
            if frames != NULL:
                memcpy(frames, stk.frames, <size_t>stk.depth * sizeof(Frame))
        else:
            frames = <Frame *>PyMem_Realloc(stk.frames, <size_t>(stk.cap * 2) * sizeof(Frame))
        if frames == NULL:
            DECREF(container)
            Err_NoMemory()
            return -1
        stk.frames = frames
        stk.cap *= 2
    stk.frames[stk.depth].container = container
    stk.frames[stk.depth].key = NULL
    stk.frames[stk.depth].is_dict = is_dict
    stk.depth += 1
    return 0


cdef PyObject *parse_loop(Parser *st, Stack *stk) noexcept:
    """Parse the document iteratively; open containers live on stk (owned by it, so
    the caller releases them whatever happens here)."""
    cdef PyObject *value
    cdef Frame *top
    cdef unsigned char c, close
    cdef bint is_dict
    cdef int rc
    while True:
        # A value starts here: a scalar, an empty container, or an opening bracket.
        skip_ws(st)
        if st.pos >= st.n:
            return fail(st, "expecting value", st.pos)
        c = st.s[st.pos]
        if c == c'{' or c == c'[':
            if stk.depth >= MAX_DECODE_DEPTH:
                return fail(st, "nesting deeper than 1000 levels", st.pos)
            is_dict = c == c'{'
            st.pos += 1
            value = Dict_New() if is_dict else List_New(0)
            if value == NULL:
                return NULL
            close = CLOSE_OBJECT if is_dict else CLOSE_ARRAY
            skip_ws(st)
            if st.pos < st.n and st.s[st.pos] == close:
                st.pos += 1
            else:
                if push(stk, value, is_dict) < 0:
                    return NULL
                if is_dict and parse_key(st, &stk.frames[stk.depth - 1]) < 0:
                    return NULL
                continue
        else:
            value = parse_scalar(st)
            if value == NULL:
                return NULL
        # Hand the finished value to its container; close every container ending here.
        while True:
            if stk.depth == 0:
                skip_ws(st)
                if st.pos != st.n:
                    DECREF(value)
                    return fail(st, "extra data", st.pos)
                return value
            top = &stk.frames[stk.depth - 1]
            if top.is_dict:
                rc = Dict_SetItem(top.container, top.key, value)
                DECREF(top.key)
                top.key = NULL
            else:
                rc = List_Append(top.container, value)
            DECREF(value)
            if rc < 0:
                return NULL
            skip_ws(st)
            c = st.s[st.pos] if st.pos < st.n else 0
            if c == c',':
                st.pos += 1
                if top.is_dict and parse_key(st, top) < 0:
                    return NULL
                break
            if c == (CLOSE_OBJECT if top.is_dict else CLOSE_ARRAY):
                st.pos += 1
                stk.depth -= 1
                value = top.container
                top.container = NULL
                continue
            if top.is_dict:
                return fail(st, "expecting ',' or '}'", st.pos)
            return fail(st, "expecting ',' or ']'", st.pos)


cdef Py_ssize_t first_invalid_utf8(const unsigned char *s, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i = 0
    cdef int L
    while i < n:
        if s[i] < 0x80:
            i += 1
            continue
        L = fa_utf8_len(s + i, n - i)
        if L == 0:
            return i
        i += L
    return -1


cdef str utf8_reason(const unsigned char *s, Py_ssize_t n, Py_ssize_t i):
    # The reasons Python's decoder gives, for a message a person can act on.
    cdef unsigned char c = s[i]
    cdef Py_ssize_t k, need
    if c < 0xC2 or c > 0xF4:
        return "invalid start byte"
    need = 2 if c < 0xE0 else (3 if c < 0xF0 else 4)
    for k in range(1, need):
        if i + k >= n:
            return "unexpected end of data"
        if k == 1:
            if ((c == 0xE0 and s[i + 1] < 0xA0) or (c == 0xED and s[i + 1] > 0x9F)
                    or (c == 0xF0 and s[i + 1] < 0x90) or (c == 0xF4 and s[i + 1] > 0x8F)):
                return "invalid continuation byte"
        if (s[i + k] & 0xC0) != 0x80:
            return "invalid continuation byte"
    return "invalid continuation byte"


cdef int propagate() except -1:
    # Returning -1 hands the already-set Python exception to the caller's handlers.
    return -1


cdef int raise_parse_error(Parser *st) except -1:
    cdef Py_ssize_t bad
    # json.loads decodes the whole body before parsing, so invalid UTF-8 anywhere is
    # the cause it would report, even past a syntax error.
    bad = first_invalid_utf8(st.s, st.n)
    if bad < 0 and st.n >= 3 and memcmp(st.s, b"\xef\xbb\xbf", 3) == 0:
        raise CodecError("message body is not valid JSON: unexpected UTF-8 BOM at offset 0")
    if bad >= 0:
        raise CodecError(f"message body is not valid UTF-8: "
                         f"{utf8_reason(st.s, st.n, bad)} at offset {bad}")
    raise CodecError(f"message body is not valid JSON: "
                     f"{(<bytes>st.err).decode('ascii')} at offset {st.err_pos}")


cdef object loads(const char *buf, Py_ssize_t size):
    cdef Parser st
    cdef Stack stk
    cdef PyObject *r
    cdef Py_ssize_t i
    cdef object result
    st.s = <const unsigned char *>buf
    st.n = size
    st.pos = 0
    st.err = NULL
    st.err_pos = 0
    stk.frames = stk.inline_frames
    stk.depth = 0
    stk.cap = INLINE_FRAMES
    r = parse_loop(&st, &stk)
    for i in range(stk.depth):
        XDECREF(stk.frames[i].container)
        XDECREF(stk.frames[i].key)
    if stk.frames != stk.inline_frames:
        PyMem_Free(stk.frames)
    if r == NULL:
        if st.err != NULL:
            raise_parse_error(&st)
        try:
            propagate()
        except MemoryError:
            raise
        except Exception as exc:
            # Not expected (the parser validates before converting); still a CodecError.
            raise CodecError(f"message body could not be decoded: {exc!r}") from exc
    result = <object>r
    DECREF(r)
    return result


def json_loads(data):
    """json.loads(bytes(data).decode("utf-8")), computed in C; CodecError on bad input."""
    cdef bytes b = data if type(data) is bytes else bytes(data)
    return loads(b, len(b))


def _json_loads_exact(data):
    """json_loads on a private copy with no byte after the data (bytes objects end in a
    NUL): lets tests under valgrind/ASan catch any read past `size`."""
    cdef bytes b = data if type(data) is bytes else bytes(data)
    cdef Py_ssize_t n = len(b)
    cdef char *copy = <char *>PyMem_Malloc(<size_t>n if n else 1)
    if copy == NULL:
        raise MemoryError()
    try:
        memcpy(copy, <const char *>b, <size_t>n)
        return loads(copy, n)
    finally:
        PyMem_Free(copy)
