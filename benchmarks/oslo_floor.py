#!/usr/bin/env python3
"""oslo.messaging's own CPU per cast, without any wire: its in-process ``fake://``
driver, RPC server and client in this one process, 1 KiB payload.

    .venv/bin/python benchmarks/oslo_floor.py        # oslo.messaging 18.x
    .venv-orig/bin/python benchmarks/oslo_floor.py   # 14.9.3

A floor for benchmarks/e2e.py's CPU per message: whatever the driver, a cast through
oslo.messaging costs at least this much, client and server sides together. (Calls are
not timed: the fake driver polls for replies every 50 ms.)
"""
import resource
import sys
import time
import warnings

warnings.simplefilter("ignore")


def main(n=3000):
    import oslo_messaging as om
    from oslo_config import cfg
    cfg.CONF([], project="oslo-floor")
    transport = om.get_rpc_transport(cfg.CONF, url="fake:///")
    data = "x" * 1024
    got = [0]

    class Endpoint:
        def record(self, ctxt, phase, id, data):
            got[0] += 1

    server = om.get_rpc_server(transport, om.Target(topic="t", server="s"), [Endpoint()],
                               executor="threading")
    server.start()
    client = om.get_rpc_client(transport, om.Target(topic="t"), timeout=30)

    def cpu():
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime
    for i in range(200):
        client.cast({}, "record", phase="warm", id=i, data=data)
    while got[0] < 200:
        time.sleep(0.001)
    got[0] = 0
    c0, t0 = cpu(), time.monotonic()
    for i in range(n):
        client.cast({}, "record", phase="p", id=i, data=data)
    while got[0] < n:
        time.sleep(0.001)
    el, used = time.monotonic() - t0, cpu() - c0
    from importlib import metadata
    print("oslo.messaging %s fake://: %.0f casts/s, %.0f us CPU per cast "
          "(client + server, one process)" % (metadata.version("oslo.messaging"),
                                              n / el, used / n * 1e6))
    server.stop()
    server.wait()
    transport.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
