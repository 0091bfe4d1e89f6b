# C declarations of the Apache Qpid Proton C API that fastamqp uses: one extern block per
# header family, C names unchanged, only what we call. Declared nogil so the engine's
# I/O thread may call them with the GIL released.
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "proton/types.h" nogil:
    ctypedef uint32_t pn_millis_t
    ctypedef int64_t pn_timestamp_t
    ctypedef uint32_t pn_char_t
    ctypedef struct pn_bytes_t:
        size_t size
        const char *start
    ctypedef struct pn_rwbytes_t:
        size_t size
        char *start
    ctypedef struct pn_uuid_t:
        char bytes[16]
    pn_bytes_t pn_bytes(size_t size, const char *start)


cdef extern from "proton/error.h" nogil:
    ctypedef struct pn_error_t:
        pass
    enum:
        PN_EOS
        PN_ERR
        PN_OVERFLOW
        PN_UNDERFLOW
        PN_STATE_ERR
        PN_ARG_ERR
        PN_TIMEOUT
        PN_INTR
        PN_INPROGRESS
        PN_OUT_OF_MEMORY
        PN_ABORTED
    const char *pn_code(int code)
    const char *pn_error_text(pn_error_t *error)
    int pn_error_code(pn_error_t *error)


cdef extern from "proton/codec.h" nogil:
    ctypedef enum pn_type_t:
        PN_NULL
        PN_BOOL
        PN_UBYTE
        PN_BYTE
        PN_USHORT
        PN_SHORT
        PN_UINT
        PN_INT
        PN_CHAR
        PN_ULONG
        PN_LONG
        PN_TIMESTAMP
        PN_FLOAT
        PN_DOUBLE
        PN_DECIMAL32
        PN_DECIMAL64
        PN_DECIMAL128
        PN_UUID
        PN_BINARY
        PN_STRING
        PN_SYMBOL
        PN_DESCRIBED
        PN_ARRAY
        PN_LIST
        PN_MAP
        PN_INVALID
    ctypedef union pn_atom_u:
        uint64_t as_ulong
        pn_uuid_t as_uuid
        pn_bytes_t as_bytes
    ctypedef struct pn_atom_t:
        pn_type_t type
        pn_atom_u u
    ctypedef pn_atom_t pn_msgid_t
    ctypedef struct pn_data_t:
        pass
    const char *pn_type_name(pn_type_t type)
    pn_data_t *pn_data(size_t capacity)
    void pn_data_free(pn_data_t *data)
    pn_error_t *pn_data_error(pn_data_t *data)
    ssize_t pn_data_decode(pn_data_t *data, const char *bytes, size_t size)
    bint pn_data_enter(pn_data_t *data)
    bint pn_data_exit(pn_data_t *data)
    uint64_t pn_data_get_ulong(pn_data_t *data)
    size_t pn_data_get_map(pn_data_t *data)
    void pn_data_clear(pn_data_t *data)
    void pn_data_rewind(pn_data_t *data)
    bint pn_data_next(pn_data_t *data)
    pn_type_t pn_data_type(pn_data_t *data)
    int pn_data_put_string(pn_data_t *data, pn_bytes_t string)
    int pn_data_put_binary(pn_data_t *data, pn_bytes_t bytes)
    pn_bytes_t pn_data_get_string(pn_data_t *data)
    pn_bytes_t pn_data_get_binary(pn_data_t *data)


cdef extern from "proton/message.h" nogil:
    ctypedef struct pn_message_t:
        pass
    pn_message_t *pn_message()
    void pn_message_free(pn_message_t *msg)
    void pn_message_clear(pn_message_t *msg)
    pn_error_t *pn_message_error(pn_message_t *msg)
    bint pn_message_is_inferred(pn_message_t *msg)
    int pn_message_set_inferred(pn_message_t *msg, bint inferred)
    pn_millis_t pn_message_get_ttl(pn_message_t *msg)
    int pn_message_set_ttl(pn_message_t *msg, pn_millis_t ttl)
    pn_msgid_t pn_message_get_id(pn_message_t *msg)
    int pn_message_set_id(pn_message_t *msg, pn_msgid_t id)
    const char *pn_message_get_address(pn_message_t *msg)
    int pn_message_set_address(pn_message_t *msg, const char *address)
    const char *pn_message_get_reply_to(pn_message_t *msg)
    int pn_message_set_reply_to(pn_message_t *msg, const char *reply_to)
    pn_msgid_t pn_message_get_correlation_id(pn_message_t *msg)
    int pn_message_set_correlation_id(pn_message_t *msg, pn_msgid_t id)
    const char *pn_message_get_content_type(pn_message_t *msg)
    int pn_message_set_content_type(pn_message_t *msg, const char *type)
    pn_timestamp_t pn_message_get_expiry_time(pn_message_t *msg)
    int pn_message_set_expiry_time(pn_message_t *msg, pn_timestamp_t time)
    pn_data_t *pn_message_body(pn_message_t *msg)
    int pn_message_decode(pn_message_t *msg, const char *bytes, size_t size)
    int pn_message_encode(pn_message_t *msg, char *bytes, size_t *size)
