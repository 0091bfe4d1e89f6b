# fastamqp/_jsoncodec.pxd: the C-level JSON codec other Cython modules cimport.
#
#   from fastamqp._jsoncodec cimport dumps as json_dumps, loads as json_loads
#
# dumps(obj, default) returns exactly json.dumps(obj, default=default).encode("ascii")
# (stdlib errors propagate unchanged); loads(buf, size) returns exactly what
# json.loads(buf[:size].decode("utf-8")) returns, and raises
# fastamqp.exceptions.CodecError on any bad input. Both need the GIL.

cdef bytes dumps(object obj, object default)
cdef object loads(const char *buf, Py_ssize_t size)
