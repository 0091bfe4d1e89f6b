#!/usr/bin/env python3
"""A burst of casts at one slow RPC server through a router: how many arrive.

    .venv/bin/python benchmarks/presettled_burst.py                  # embedded router, both data paths
    .venv/bin/python benchmarks/presettled_burst.py --peer url=amqp://127.0.0.1:5672/
    .venv/bin/python benchmarks/presettled_burst.py --peer python --peer c --peer url=URL --json out.json

Issue 14 (REFERENCE §9): qdrouterd discards pre-settled deliveries when a consumer's
outgoing link is congested (linkCapacity 250; src/router_core/forwarder.c,
qdr_forward_deliver_CT), so pre-settled casts a slow server cannot keep up with are
lost, 249 at a time; unsettled ones hold their sender's credit and are never lost.
This runs the same burst, casts from ``--threads`` threads on one transport, with
explicit settings (``[oslo_messaging_amqp] pre_settled = rpc-cast,rpc-reply``, then
``pre_settled = rpc-reply``: casts unsettled), at a slow RPC server through each
``--peer``. The server has one worker thread; it is stuck for the first ``--stall``
seconds of the burst (a long request), then spends ``--delay`` per cast. The stall is
what makes the server's link congested whatever the machine's speed: a server
acknowledging casts as they come refills its credit window on every acknowledgement
(REFERENCE §3.6), so it takes a burst off the router almost as fast as it comes.

* ``python`` / ``c``: the embedded router (``python -m fastamqp.intermediary --mode
  router --engine python|c``) in its own process;
* ``url=URL``: an intermediary this script did not start (qdrouterd, qpidd, RabbitMQ).

"dropped" is the router's own count of pre-settled deliveries it discarded, before and
after the burst (benchmarks/peers.py: the embedded router's ``dropped_presettled``,
qdrouterd's ``droppedPresettledDeliveries`` through ``$management``; none for others).

Every cast carries a unique id; the server counts ids, so "lost" is exact. The
client engine is fastamqp's default (``FASTAMQP_PUREPYTHON=1`` for the pure one).
Prints a table and, with ``--json``, the rows.
"""
import argparse
import json
import os
import sys
import threading
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402

warnings.simplefilter("ignore")     # oslo's and eventlet's deprecation noise

GROUP = "oslo_messaging_amqp"
SETTLEMENTS = {"presettled": ["rpc-cast", "rpc-reply"], "unsettled": ["rpc-reply"]}


class SlowServer:
    """The RPC endpoint: each cast takes ``delay`` seconds, none passes while ``gate``
    is closed; ids are counted."""

    def __init__(self, delay):
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.seen = set()
        self.duplicates = 0
        self.last = time.monotonic()

    def record(self, ctxt, id):
        self.gate.wait(60)
        time.sleep(self.delay)
        with self.lock:
            if id in self.seen:
                self.duplicates += 1
            self.seen.add(id)
            self.last = time.monotonic()


def burst(url, settlement, casts=2000, threads=4, delay=0.001, stall=1.0, quiet=2.0,
          deadline=60.0, done=None, topic="burst"):
    """One burst through ``url``; returns sent/received/lost/duplicates/seconds.

    The server runs until every cast is accounted for: ``done(received)`` is true
    (the caller knows how many the peer dropped), or nothing arrived for ``quiet``
    seconds after the last send. Uses oslo's global cfg.CONF, reset before and after.
    """
    import oslo_messaging
    from oslo_config import cfg

    from fastamqp import opts

    conf = cfg.CONF
    conf.reset()
    opts.register_opts(conf)
    conf.set_override("pre_settled", SETTLEMENTS[settlement], GROUP)
    made = []

    def transport():
        t = oslo_messaging.get_rpc_transport(conf, url=url)
        made.append(t)
        return t
    endpoint = SlowServer(delay)
    server = oslo_messaging.get_rpc_server(
        transport(), oslo_messaging.Target(topic=topic, server="slow"), [endpoint],
        executor="threading")
    # One worker (the option exists once a server is made): oslo acknowledges, so
    # gives credit back, in the worker, so the server takes a cast off its link only
    # when the previous one is done.
    conf.set_override("executor_thread_pool_size", 1)
    server.start()
    errors = []
    try:
        client = oslo_messaging.get_rpc_client(transport(),
                                               oslo_messaging.Target(topic=topic))
        # Attach the client's link (and let the server's settle) before the clock runs.
        client.cast({}, "record", id=-1)
        wait_until(lambda: -1 in endpoint.seen, 10)
        ids = iter(range(casts))
        ids_lock = threading.Lock()

        def sender():
            while True:
                with ids_lock:
                    i = next(ids, None)
                if i is None:
                    return
                try:
                    client.cast({}, "record", id=i)
                except Exception as exc:  # counted, not raised: the run goes on
                    errors.append(repr(exc))
        endpoint.gate.clear()
        opener = threading.Timer(stall, endpoint.gate.set)
        started = time.monotonic()
        opener.start()
        workers = [threading.Thread(target=sender) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        sent_s = time.monotonic() - started
        end = time.monotonic() + deadline

        def settled():
            with endpoint.lock:
                got = len(endpoint.seen) - 1
                idle = time.monotonic() - max(endpoint.last, started + max(sent_s, stall))
            if done is not None:
                return done(got)
            return got >= casts or idle >= quiet
        while not settled() and time.monotonic() < end:
            time.sleep(0.05)
        seconds = time.monotonic() - started
    finally:
        endpoint.gate.set()
        server.stop()
        server.wait()
        for t in made:
            t.cleanup()
        conf.reset()
    received = len(endpoint.seen - {-1})
    return {"settlement": settlement, "sent": casts - len(errors), "errors": len(errors),
            "received": received, "lost": casts - len(errors) - received,
            "duplicates": endpoint.duplicates, "send_seconds": round(sent_s, 3),
            "seconds": round(seconds, 3)}


def wait_until(pred, timeout):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise RuntimeError("timed out")
        time.sleep(0.02)


def run_peer(name, settlement, args):
    if name in ("python", "c"):
        # The router is C or Python whatever engine this process's client runs.
        env = {k: v for k, v in os.environ.items() if k != "FASTAMQP_PUREPYTHON"}
        extra = ["--link-capacity", str(args.link_capacity)] if args.link_capacity else []
        router = peers.Embedded("router", engine=name, env=env, extra_args=extra)
    else:
        router = peers.External("router", name.split("=", 1)[1])
    try:
        before = router.dropped_presettled()
        row = burst(router.url, settlement, args.casts, args.threads, args.delay,
                    args.stall)
        after = router.dropped_presettled()
    finally:
        router.stop()
    row["dropped_presettled"] = None if None in (before, after) else after - before
    row["peer"] = name
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peer", action="append",
                    help="python, c (embedded router, own process) or url=URL; "
                         "repeatable (default: python and c)")
    ap.add_argument("--settlement", action="append", choices=sorted(SETTLEMENTS),
                    help="repeatable (default: both)")
    ap.add_argument("--casts", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--delay", type=float, default=0.001,
                    help="seconds the server spends on each cast (default 0.001)")
    ap.add_argument("--stall", type=float, default=1.0,
                    help="seconds the server is stuck at the start of the burst "
                         "(default 1)")
    ap.add_argument("--link-capacity", type=int, default=None,
                    help="the embedded router's --link-capacity (default: its own, 250)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    peers = args.peer or ["python", "c"]
    for p in peers:
        if p not in ("python", "c") and not p.startswith("url="):
            ap.error("--peer: python, c or url=URL, not %r" % p)
    import fastamqp
    rows = []
    print("%-28s %-10s %6s %8s %6s %6s %8s" % ("peer", "casts", "sent", "received",
                                             "lost", "dups", "dropped"))
    for _ in range(args.repeat):
        for peer in peers:
            for settlement in args.settlement or ["presettled", "unsettled"]:
                row = run_peer(peer, settlement, args)
                row["engine"] = fastamqp.engine_name()
                rows.append(row)
                print("%-28s %-10s %6d %8d %6d %6d %8s" % (
                    peer[:28], settlement, row["sent"], row["received"], row["lost"],
                    row["duplicates"], row["dropped_presettled"]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
