"""Which engine runs: the C extension or the pure-Python reference.

``FASTAMQP_PUREPYTHON=1`` in the environment at import time forces the pure-Python
engine. Otherwise the C extension is used; if it was built but cannot be imported, that
is a broken install, and we say so loudly (a warning naming the import error) instead of
running slowly without anyone noticing.
"""
import importlib.util
import os
import warnings

from fastamqp._pure import codec as py_codec

PUREPYTHON = os.environ.get("FASTAMQP_PUREPYTHON", "").strip().lower() in (
    "1", "true", "yes", "on")

c_codec = None
c_import_error = None
if not PUREPYTHON:
    try:
        from fastamqp import _core as c_codec
    except ImportError as exc:  # not built (pure install) or broken
        c_import_error = exc
        if importlib.util.find_spec("fastamqp._core") is None:
            why = "it is not built in this installation of fastamqp"
        else:
            why = f"it is installed but does not import: {exc}"
        warnings.warn(
            f"fastamqp: no C extension ({why}); running the pure-Python engine, which "
            f"is several times slower. Set FASTAMQP_PUREPYTHON=1 to choose it "
            f"explicitly.", RuntimeWarning, stacklevel=2)

codec = c_codec if c_codec is not None else py_codec

# The connection engine: the C one (native I/O thread, fastamqp._io) with the C codec,
# else the pure-Python one on pyngus.
from fastamqp._pure.connection import Connection as py_connection  # noqa: E402

c_connection = None
if c_codec is not None:
    try:
        from fastamqp._cengine import Connection as c_connection
    except ImportError as exc:
        c_import_error = exc
        warnings.warn(
            f"fastamqp: the C codec imports but the C connection engine does not "
            f"({exc}); running the pure-Python engine.", RuntimeWarning, stacklevel=2)

Connection = c_connection if c_connection is not None else py_connection


def engine_name():
    """'c' when the C fast path is active, 'python' for the pure-Python engine."""
    return codec.IMPLEMENTATION
