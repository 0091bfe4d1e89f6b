"""The C connection engine: the connection front (fastamqp.engine.front) on the native
I/O thread of fastamqp.engine.c._io (engine/c/fa_io.c). Data plane in C, without the
GIL: frames, credit, settlement, the deadline of every send, reply correlation."""
from fastamqp.engine import front
from fastamqp.engine.c import _io


class Connection(front.Connection):
    """See fastamqp.engine.interface.Connection."""

    io_layer = _io
