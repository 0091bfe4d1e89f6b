"""fastamqp: an AMQP 1.0 driver for oslo.messaging with a C fast path on Qpid Proton.

The packages, from the oslo side down (docs/engine.md):
  driver.py, opts.py      the oslo.messaging driver and its [oslo_messaging_amqp] options
  addressing/             oslo targets to AMQP addresses (AMQP syntaxes, RabbitMQ's)
  rabbitmq/               the queues fastamqp declares on RabbitMQ
  codec.py, message.py    AMQP messages as bytes (the C codec is _core.pyx)
  engine/                 connections: the C engine and the pure-Python reference
  intermediary/           the embedded AMQP 1.0 router and broker, for tests and the demo
  tools/                  the ``fastamqp`` command: check, codec-check, demo
"""
__version__ = "0.1.0.dev0"


def __getattr__(name):
    # fastamqp.engine_name() loads the engine; importing fastamqp (e.g. for the
    # options) must not.
    if name == "engine_name":
        from fastamqp.engine import engine_name
        return engine_name
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
