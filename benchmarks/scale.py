#!/usr/bin/env python3
"""Scale: many RPC servers on one connection, many calls outstanding at once.

    .venv/bin/python benchmarks/scale.py [--servers 1,10,100,250,500,1000]
                                         [--calls 10000] [--intermediary c|python]
                                         [--json out.json]

Through fastamqp's embedded router (the relay, ``--intermediary c``, by default), in a
process of its own on a free port of 127.0.0.1, stopped at the end. This process is the
measured one and uses the C engine.

* Servers: one oslo.messaging transport (one AMQP connection) gets more and more RPC
  servers, each on a target of its own (3 receiver links each: the server's, the
  fanout and the topic address). At each step of ``--servers`` the new servers are
  started, then called once each from a client on the same transport: the time from
  the first start to the last answer, per new server, is the attach time (the links
  of a server must be attached for the router to route its call). The process's
  resident memory (VmRSS) after each step gives the memory per server. oslo's own share
  (a listener thread and an executor per server) is included: it is what a service
  pays.
* Calls: ``--calls`` calls registered and sent at once on one connection at the engine
  level (``expect_reply`` + ``send``, as the driver makes a call), the server answering
  only when all have arrived; the time until every reply reached its waiter, and the
  memory per outstanding call.

Prints a table; ``--json`` writes the figures. Nothing here is a timed test: the
machine's noise shows in the curve, which is why it is a curve.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time

TIMEOUT = 120.0


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_intermediary(engine):
    # The fastamqp this process imports (an installed one, or PYTHONPATH's tree).
    import fastamqp
    here = os.path.dirname(os.path.dirname(os.path.abspath(fastamqp.__file__)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastamqp.intermediary", "--mode", "router",
         "--engine", engine], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=dict(os.environ, PYTHONPATH=here + os.pathsep
                            + os.environ.get("PYTHONPATH", "")))
    banner = proc.stdout.readline()
    match = re.search(r"amqp://[\d.]+:\d+", banner)
    if not match:
        proc.kill()
        raise SystemExit(f"scale: the intermediary did not start: {banner!r}")
    return proc, match.group(0) + "/"


class Echo:
    def echo(self, ctxt, n):
        return n


def servers_curve(url, steps):
    import oslo_messaging
    from oslo_config import cfg
    cfg.CONF([], project="fastamqp-scale")
    transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=url)
    client_target = oslo_messaging.Target(topic="scale-warm")
    # The connection, the reply link and the threads of a first call: not per server.
    warm = oslo_messaging.get_rpc_server(transport, oslo_messaging.Target(
        topic="scale-warm", server="w"), [Echo()], executor="threading")
    warm.start()
    oslo_messaging.get_rpc_client(transport, client_target, timeout=TIMEOUT).call(
        {}, "echo", n=0)
    servers, rows = [], []
    base = rss_kib()
    for count in steps:
        new = count - len(servers)
        if new <= 0:
            continue
        started = time.monotonic()
        batch = []
        for i in range(len(servers), count):
            server = oslo_messaging.get_rpc_server(
                transport, oslo_messaging.Target(topic=f"scale{i}", server="h"),
                [Echo()], executor="threading")
            server.start()
            batch.append(i)
            servers.append(server)
        for i in batch:
            client = oslo_messaging.get_rpc_client(
                transport, oslo_messaging.Target(topic=f"scale{i}"), timeout=TIMEOUT)
            assert client.call({}, "echo", n=i) == i
        elapsed = time.monotonic() - started
        rss = rss_kib()
        rows.append({"servers": count, "links": 3 * count, "new": new,
                     "attach_ms_per_server": 1000 * elapsed / new,
                     "rss_mib": rss / 1024,
                     "kib_per_server": (rss - base) / count})
        print("  %5d servers (%5d links): %6.2f ms per new server to attach and "
              "answer, RSS %7.1f MiB, %6.1f KiB per server"
              % (count, 3 * count, rows[-1]["attach_ms_per_server"], rss / 1024,
                 rows[-1]["kib_per_server"]), flush=True)
    for server in servers + [warm]:
        server.stop()
    for server in servers + [warm]:
        server.wait()
    transport.cleanup()
    return rows


def _engine_connection(url, name):
    from fastamqp.engine.c.connection import Connection
    from fastamqp.engine.interface import ConnectionSettings, Host
    port = int(url.rsplit(":", 1)[1].strip("/"))
    conn = Connection([Host("127.0.0.1", port)],
                      ConnectionSettings(container_id=f"scale-{name}-{os.getpid()}"))
    conn.start()
    conn.wait_active(TIMEOUT)
    return conn


def subscriptions_curve(url, steps):
    """The driver's own share of a server: subscriptions on 3 addresses each, on one
    engine connection, without oslo.messaging."""
    from fastamqp import codec
    from fastamqp.engine.interface import Outcome
    listener, client = _engine_connection(url, "subs"), _engine_connection(url, "send")
    subs, rows = [], []
    base = rss_kib()
    prefix = "openstack.org/om/rpc/"
    for count in steps:
        new = count - len(subs)
        if new <= 0:
            continue
        started = time.monotonic()
        batch = []
        for i in range(len(subs), count):
            sub = listener.subscribe([f"{prefix}unicast/openstack/sub{i}/h",
                                      f"{prefix}multicast/openstack/sub{i}",
                                      f"{prefix}anycast/openstack/sub{i}"], 100)
            batch.append((i, sub))
            subs.append(sub)
        for i, sub in batch:
            address = f"{prefix}anycast/openstack/sub{i}"
            # The router gives credit for the address only once the subscription's
            # link is attached; the message then arrives.
            client.send(address, codec.encode_request(address, {"method": "x"}, {}),
                        presettled=True, deadline=time.monotonic() + TIMEOUT)
            got = sub.poll(1, TIMEOUT)
            if not got:
                raise SystemExit(f"scale: subscription {i} received nothing")
            sub.settle(got[0], Outcome.ACCEPTED)
        elapsed = time.monotonic() - started
        rss = rss_kib()
        rows.append({"subscriptions": count, "links": 3 * count,
                     "attach_ms_per_subscription": 1000 * elapsed / new,
                     "rss_mib": rss / 1024, "kib_per_subscription": (rss - base) / count})
        print("  %5d subscriptions (%5d links): %6.2f ms per new one to attach and "
              "receive, RSS %7.1f MiB, %5.1f KiB per subscription"
              % (count, 3 * count, rows[-1]["attach_ms_per_subscription"], rss / 1024,
                 rows[-1]["kib_per_subscription"]), flush=True)
    listener.close(10)
    client.close(10)
    return rows


def calls_outstanding(url, count):
    from fastamqp import codec
    from fastamqp.engine.c.connection import Connection
    from fastamqp.engine.interface import ConnectionSettings, Host, Outcome
    port = int(url.rsplit(":", 1)[1].strip("/"))
    conns = []

    def connect(name):
        conn = Connection([Host("127.0.0.1", port)],
                          ConnectionSettings(container_id=f"scale-{name}-{os.getpid()}"))
        conn.start()
        conn.wait_active(TIMEOUT)
        conns.append(conn)
        return conn

    client, server = connect("client"), connect("server")
    address = "openstack.org/om/rpc/anycast/openstack/scale-calls"
    sub = server.subscribe([address], 500)
    deadline = time.monotonic() + TIMEOUT
    reply_to = client.reply_address(deadline)
    time.sleep(0.3)             # the server's link reaches the router
    before = rss_kib()
    started = time.monotonic()
    waiters = [(f"s{i}", client.expect_reply(f"s{i}")) for i in range(count)]

    def send_all():
        # In a thread: the router passes requests on only as the server takes them.
        for mid, _ in waiters:
            client.send(address, codec.encode_request(
                address, {"method": "echo"}, {}, message_id=mid, reply_to=reply_to),
                presettled=True, deadline=deadline)
    sender = threading.Thread(target=send_all)
    sender.start()
    requests = []
    while len(requests) < count:
        batch = sub.poll(500, TIMEOUT)
        if not batch:
            raise SystemExit(f"scale: {len(requests)} of {count} requests arrived")
        for delivery in batch:
            sub.settle(delivery, Outcome.ACCEPTED)
            decoded = codec.decode(delivery.payload)
            requests.append((decoded.reply_to, decoded.message_id))
    sender.join()
    outstanding = rss_kib()
    for reply_address, mid in reversed(requests):
        server.send(reply_address, codec.encode_reply(reply_address, mid, response=mid),
                    presettled=True, deadline=deadline)
    for mid, waiter in waiters:
        assert codec.decode(waiter.wait(deadline)).response == mid
    elapsed = time.monotonic() - started
    for conn in conns:
        conn.close(10)
    row = {"calls": count, "seconds": elapsed, "calls_per_s": count / elapsed,
           "kib_per_outstanding_call": (outstanding - before) / count}
    print("  %d calls outstanding at once: all answered in %.2f s (%d calls/s), "
          "%.2f KiB per outstanding call (its waiter, request and queued record)"
          % (count, elapsed, row["calls_per_s"], row["kib_per_outstanding_call"]))
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default="1,10,100,250,500,1000",
                    help="comma-separated server counts, growing")
    ap.add_argument("--calls", type=int, default=10000)
    ap.add_argument("--intermediary", choices=("python", "c"), default="c")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)
    steps = sorted({int(x) for x in a.servers.split(",") if x.strip()})
    proc, url = start_intermediary(a.intermediary)
    try:
        print(f"scale: {os.cpu_count()} CPUs, intermediary ({a.intermediary}) at {url}")
        # The calls first, on a fresh heap: memory freed by the servers' part would
        # hide what outstanding calls take.
        calls = calls_outstanding(url, a.calls) if a.calls else None
        print("engine level (no oslo.messaging):")
        subscriptions = subscriptions_curve(url, steps)
        print("oslo.messaging RPC servers on one transport:")
        rows = servers_curve(url, steps)
    finally:
        proc.terminate()
        proc.wait(30)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"servers": rows, "subscriptions": subscriptions, "calls": calls,
                       "intermediary": a.intermediary,
                       "cpus": os.cpu_count()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
