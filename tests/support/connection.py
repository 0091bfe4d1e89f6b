"""Engine-level helpers (tests/engine/): connections opened by a test on its engine
(the ``engine`` fixture of tests/conftest.py) and closed at its end, deadlines, and
request bodies."""
import time

import pytest

from fastamqp.engine import py_codec as codec
from fastamqp.engine.interface import ConnectionSettings, Host

TIMEOUT = 10


class Opened:
    """Connections opened by a test, closed at its end."""

    def __init__(self, engine):
        self.engine = engine.connection
        self.opened = []

    def __call__(self, *intermediaries, **settings):
        settings.setdefault("container_id", f"test-{len(self.opened)}")
        settings.setdefault("link_retry_delay", 0.2)
        settings.setdefault("retry_interval", 0.2)
        hosts = [Host("127.0.0.1", im.port) for im in intermediaries]
        conn = self.engine(hosts, ConnectionSettings(**settings))
        conn.start()
        conn.wait_active(TIMEOUT)
        self.opened.append(conn)
        return conn


@pytest.fixture
def connect(engine):
    opened = Opened(engine)
    yield opened
    for conn in opened.opened:
        conn.close(5)


def deadline(seconds=TIMEOUT):
    return time.monotonic() + seconds


def request(address, method="m", **kw):
    return codec.encode_request(address, {"method": method}, {}, **kw)


def poll_one(sub, timeout=TIMEOUT):
    batch = sub.poll(1, timeout)
    assert batch, "nothing arrived"
    return batch[0]
