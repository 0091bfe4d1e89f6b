#!/usr/bin/env python3
"""The driver's own CPU per message, without oslo.messaging's RPC layers around it.

    PYTHONPATH=. .venv/bin/python benchmarks/driver_cost.py [--count 20000]

Through the relay in broker mode, in this process (the broker stores what is sent, so no
consumer has to keep up; the relay's thread is not the calling thread). Each row is the
calling thread's CPU time (``time.thread_time``) per operation, over ``--count``
operations, the C engine:

* ``codec.encode_request``: a 1 KiB cast's message, encoded;
* ``Connection.send``, pre-settled: the engine's hand-off of that message;
* ``ProtonDriver.send`` (a cast): address, encode and hand-off, as oslo calls it;
* ``RPCClient.cast``: the same through oslo.messaging's client (its own layers added);
* ``Listener.poll`` + ``acknowledge``: a server receiving a queued request (take from
  the engine, decode, oslo's IncomingMessage) and settling it.

The I/O thread's work is not in these figures: ``docs/benchmarks-engine.md`` has whole
processes' CPU per message, and ``benchmarks/e2e.py`` the end to end chain.
"""
import argparse
import sys
import time


def per_op(fn, count):
    fn()
    start = time.thread_time()
    for _ in range(count):
        fn()
    return 1e6 * (time.thread_time() - start) / count


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=20000)
    a = ap.parse_args(argv)
    import oslo_messaging
    from oslo_config import cfg
    from fastamqp import codec, engine
    from fastamqp.intermediary.relay import Relay
    if engine.engine_name() != "c":
        print("driver_cost: the C engine is not built", file=sys.stderr)
        return 1
    cfg.CONF([], project="fastamqp-driver-cost")
    n = a.count
    ctxt = {"user": "u", "project": "p", "request_id": "req-1234"}
    message = {"method": "record", "args": {"data": "x" * 1024}}
    rows = []
    with Relay(mode="broker") as relay:
        transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=relay.url)
        driver = transport._driver
        conn = driver.connection()
        conn.wait_active(10)
        target = oslo_messaging.Target(topic="cost")
        address = driver._addresser(conn.peer).resolve(target)
        payload = codec.encode_request(address, message, ctxt)
        rows.append(("codec.encode_request (1 KiB cast)",
                     per_op(lambda: codec.encode_request(address, message, ctxt), n)))
        rows.append(("Connection.send, pre-settled", per_op(
            lambda: conn.send(address, payload, presettled=True,
                              deadline=time.monotonic() + 10), n)))
        rows.append(("ProtonDriver.send (a cast)",
                     per_op(lambda: driver.send(target, ctxt, message), n)))
        client = oslo_messaging.get_rpc_client(transport, target)
        rows.append(("oslo RPCClient.cast (for comparison)", per_op(
            lambda: client.cast(ctxt, "record", data=message["args"]["data"]), n)))
        # What the casts above left in the broker: 4 n + 4 requests to receive.
        adapter = driver.listen(oslo_messaging.Target(topic="cost", server="s"), 1, None)
        listener = adapter._poll_style_listener

        def receive():
            [incoming] = listener.poll(timeout=10)
            incoming.acknowledge()
        rows.append(("Listener.poll + acknowledge (queued request)", per_op(receive, n)))
        listener.cleanup()
        transport.cleanup()
    print("CPU of the calling thread per operation (C engine, %d operations each):" % n)
    for name, us in rows:
        print("  %-46s %6.1f us" % (name, us))
    return 0


if __name__ == "__main__":
    sys.exit(main())
