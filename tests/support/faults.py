"""The oslo-level set-up of the fault tests (tests/driver/test_faults.py), shared with
the wire fuzz (tests/fuzz/test_wire_fuzz.py) and the driver security tests
(tests/driver/test_driver_security.py): the options (casts confirmed, short retry and
reply timeouts), transports on the test's engine (the ``engine`` fixture of
tests/conftest.py), and a polling wait."""
import time

import pytest
from oslo_config import cfg

from fastamqp import opts
from support.oslo_env import transport_factory

GROUP = "oslo_messaging_amqp"
TIMEOUT = 10
CALL_TIMEOUT = 5


@pytest.fixture
def conf():
    cfg.CONF.reset()
    opts.register_opts(cfg.CONF)
    cfg.CONF.set_override("pre_settled", [], GROUP)       # casts wait for the ack
    cfg.CONF.set_override("link_retry_delay", 1, GROUP)
    # A server's reply to a client that vanished with the crash waits for credit the
    # router never gives; the default (30 s) would hold server.wait() that long.
    cfg.CONF.set_override("default_reply_timeout", CALL_TIMEOUT, GROUP)
    yield cfg.CONF
    cfg.CONF.reset()


@pytest.fixture
def transports(conf, engine):
    yield from transport_factory(conf)


def wait_until(predicate, timeout=TIMEOUT, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
