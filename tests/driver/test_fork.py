"""Fork safety: a child process gets a fresh engine.

The parent's I/O thread does not exist in a forked child, so the driver must open a
new connection there (and never touch the parent's, whose locks may have been copied
while held). The parent keeps working on its own connection throughout.
"""
import os
import time

import oslo_messaging
import pytest
from oslo_config import cfg

from fastamqp.intermediary import Intermediary

TIMEOUT = 10


class Echo:
    def echo(self, ctxt, value):
        return {"value": value, "pid": os.getpid()}


@pytest.fixture
def transport():
    cfg.CONF.reset()
    with Intermediary(mode="router") as im:
        transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=im.url)
        yield transport
        transport.cleanup()
    cfg.CONF.reset()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_child_process_gets_a_fresh_engine(transport):
    server = oslo_messaging.get_rpc_server(
        transport, oslo_messaging.Target(topic="fork", server="parent"), [Echo()],
        executor="threading")
    server.start()
    try:
        time.sleep(0.3)
        client = oslo_messaging.get_rpc_client(
            transport, oslo_messaging.Target(topic="fork"), timeout=TIMEOUT)
        assert client.call({}, "echo", value="before")["value"] == "before"
        parent_connection = transport._driver.connection()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:   # the child: report through the pipe, never return to pytest
            status = b"fail"
            try:
                child_client = oslo_messaging.get_rpc_client(
                    transport, oslo_messaging.Target(topic="fork"), timeout=TIMEOUT)
                reply = child_client.call({}, "echo", value="from-child")
                fresh = transport._driver.connection() is not parent_connection
                if reply == {"value": "from-child", "pid": os.getppid()} and fresh:
                    status = b"ok"
            except BaseException as exc:   # noqa: B902 - report anything
                status = repr(exc).encode()[:500]
            finally:
                os.write(write_end, status)
                os._exit(0)
        os.close(write_end)
        _, code = os.waitpid(pid, 0)
        answer = os.read(read_end, 600)
        os.close(read_end)
        assert answer == b"ok", answer
        # The parent's own connection is untouched and still serves.
        assert transport._driver.connection() is parent_connection
        assert client.call({}, "echo", value="after")["value"] == "after"
    finally:
        server.stop()
        server.wait()
