"""The connection engines, and which one runs.

Layout:
  interface.py  what the driver asks of an engine (Connection, SendResult, ...)
  front.py      the connection front: interface.Connection, once, over an I/O layer
  iolayer.py    what the front asks of an I/O layer, and the constants they share
  control.py    what the front decides about hosts: status, refusals, SASL/TLS settings
  policy.py     the I/O-thread rules both I/O layers apply, as data
  c/            the C engine: connection.py binds the front to _io.pyx over fa_io.c
  pure/         the pure-Python engine: connection.py binds the front to io.py (pyngus);
                and the pure codec

``FASTAMQP_PUREPYTHON=1`` in the environment at import time forces the pure-Python
engine. Otherwise the C extension is used; if it was built but cannot be imported, that
is a broken install, and we say so loudly (a warning naming the import error) instead of
running slowly without anyone noticing.

Nothing is loaded until asked for: ``fastamqp.engine.codec`` (and ``c_codec``,
``py_codec``) loads the codecs only, ``Connection`` (and ``c_connection``,
``py_connection``) the connection engines -- so importing the options, the interface or
the policies (``oslo-config-generator``) loads neither pyngus, Proton nor the C
extension.
"""
import importlib.util
import os
import threading
import warnings

PUREPYTHON = os.environ.get("FASTAMQP_PUREPYTHON", "").strip().lower() in (
    "1", "true", "yes", "on")

_CODEC_NAMES = ("codec", "c_codec", "py_codec")
_CONNECTION_NAMES = ("Connection", "c_connection", "py_connection")
_lock = threading.RLock()
_loaded = {}
c_import_error = None


def _load_codecs():
    global c_import_error
    from fastamqp.engine.pure import codec as py_codec
    c_codec = None
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
                f"fastamqp: no C extension ({why}); running the pure-Python engine, "
                f"which is several times slower. Set FASTAMQP_PUREPYTHON=1 to choose it "
                f"explicitly.", RuntimeWarning, stacklevel=3)
    _loaded.update(c_codec=c_codec, py_codec=py_codec,
                   codec=c_codec if c_codec is not None else py_codec)


def _load_connections():
    # The C connection engine (native I/O thread, engine.c._io) runs with the C codec
    # only; else the pure-Python one on pyngus.
    global c_import_error
    c_codec = __getattr__("c_codec")
    from fastamqp.engine.pure.connection import Connection as py_connection
    c_connection = None
    if c_codec is not None:
        try:
            from fastamqp.engine.c.connection import Connection as c_connection
        except ImportError as exc:
            c_import_error = exc
            warnings.warn(
                f"fastamqp: the C codec imports but the C connection engine does not "
                f"({exc}); running the pure-Python engine.", RuntimeWarning, stacklevel=3)
    _loaded.update(c_connection=c_connection, py_connection=py_connection,
                   Connection=c_connection if c_connection is not None else py_connection)


def __getattr__(name):
    if name in _CODEC_NAMES or name in _CONNECTION_NAMES:
        with _lock:
            if name not in _loaded:
                (_load_codecs if name in _CODEC_NAMES else _load_connections)()
        return _loaded[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def engine_name():
    """The connection engine that runs: 'c' (the C engine, with the C codec) or
    'python' (the pure-Python engine and codec), after any fallback."""
    return "c" if __getattr__("c_connection") is not None else "python"
