"""Run in a child process: eventlet.monkey_patch(), then stop listeners that are
blocked in poll() with no timeout -- engine level and through an oslo RPC server.
Prints "ok" and exits 0 when everything stopped in time."""
import eventlet
eventlet.monkey_patch()

import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import oslo_messaging  # noqa: E402
from oslo_config import cfg  # noqa: E402

from fastamqp import engine  # noqa: E402
from fastamqp.engine.interface import ConnectionSettings, Host  # noqa: E402


def main(port):
    conn = engine.Connection([Host("127.0.0.1", port)],
                             ConnectionSettings(container_id="eventlet-child"))
    conn.start()
    conn.wait_active(10)
    sub = conn.subscribe(["unicast.eventlet.stop"], 5)
    polled = []
    poller = threading.Thread(target=lambda: polled.append(sub.poll(1, None)))
    poller.start()
    time.sleep(0.3)
    sub.close()
    poller.join(5)
    assert not poller.is_alive(), "poll(None) was not woken by close()"
    assert polled == [[]], polled
    conn.close(5)

    cfg.CONF([], project="eventlet-child")
    transport = oslo_messaging.get_rpc_transport(
        cfg.CONF, url=f"amqp://127.0.0.1:{port}/")
    server = oslo_messaging.get_rpc_server(
        transport, oslo_messaging.Target(topic="eventlet", server="s1"), [object()],
        executor="eventlet")
    server.start()
    time.sleep(0.3)
    started = time.monotonic()
    server.stop()
    server.wait()
    assert time.monotonic() - started < 5, "the RPC server took too long to stop"
    transport.cleanup()
    print("ok", engine.Connection.__module__)


if __name__ == "__main__":
    main(int(sys.argv[1]))
