"""The pure-Python connection engine: the connection front (fastamqp.engine.front) on
the pure-Python I/O layer on pyngus (fastamqp.engine.pure.io), the reference the C
engine is tested against."""
from fastamqp.engine import front
from fastamqp.engine.pure import io


class Connection(front.Connection):
    """See fastamqp.engine.interface.Connection."""

    io_layer = io
