"""fastamqp: an AMQP 1.0 driver for oslo.messaging with a C fast path on Qpid Proton."""
from fastamqp.engine import engine_name  # noqa: F401

__version__ = "0.1.0.dev0"
