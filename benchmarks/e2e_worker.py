#!/usr/bin/env python3
"""The workload side of benchmarks/e2e.py: one child process, one role.

    e2e_worker.py server --rpc-url URL --notify-url URL --topics bench,fan --name s1 [--listen]
    e2e_worker.py client --rpc-url URL --notify-url URL

It runs under whatever interpreter the orchestrator picks -- fastamqp's venv (oslo.messaging
18.x) or the original driver's (oslo.messaging 14.9.3) -- so it uses only the public
oslo.messaging API both releases have (get_rpc_transport, get_notification_transport,
get_rpc_server, get_rpc_client, Notifier, get_notification_listener) and never imports
fastamqp: the transport URL alone picks the driver.

Protocol: one JSON object a line. The orchestrator writes commands on stdin, the worker
answers each with exactly one JSON line on stdout (``{"ok": false, "error": ...}`` on
failure). ``{"cmd": "cpu"}`` answers this process's user+system CPU seconds
(getrusage RUSAGE_SELF, all threads) and the monotonic clock (CLOCK_MONOTONIC is
system-wide on Linux, so the orchestrator can compare times across processes).

Every message carries ``phase`` and a per-phase integer ``id``; servers and listeners
record ids per phase, so deliveries are counted where they arrive (unique ids and
duplicates), never inferred from sends.
"""
import argparse
import itertools
import json
import logging
import os
import resource
import sys
import threading
import time
import warnings

warnings.simplefilter("ignore")
PAYLOAD_BYTES = 1024
DATA = "x" * PAYLOAD_BYTES


def _cpu():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _info(transport):
    """What actually runs in this process: driver class, engine, versions."""
    info = {"python": sys.version.split()[0], "executable": sys.executable,
            "driver": "%s.%s" % (type(transport._driver).__module__,
                                 type(transport._driver).__name__)}
    try:
        from importlib import metadata
        for dist in ("oslo.messaging", "pyngus", "python-qpid-proton", "kombu", "amqp"):
            try:
                info[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
    except ImportError:
        pass
    fa = sys.modules.get("fastamqp")
    if fa is not None:
        info["fastamqp_file"] = fa.__file__
        info["fastamqp_engine"] = fa.engine_name()
        info["connection_modules"] = sorted(
            m for m in ("fastamqp.engine.c.connection", "fastamqp.engine.pure.connection")
            if m in sys.modules)
    return info


def _setup_oslo():
    from oslo_config import cfg
    # oslo.messaging 18.3's tracing options live on the global CONF: use it.
    cfg.CONF([], project="fastamqp-e2e")
    pre_settled = os.environ.get("FASTAMQP_E2E_PRE_SETTLED")
    if pre_settled:
        from fastamqp import opts
        opts.register_opts(cfg.CONF)
        cfg.CONF.set_override("pre_settled", pre_settled.split(","), opts.GROUP)
    return cfg.CONF


def _inject():
    """FASTAMQP_E2E_INJECT=lose:N,dup:M: a receiver forgets every N-th message and
    counts every M-th twice, to prove that the checks catch it."""
    out = {}
    for part in os.environ.get("FASTAMQP_E2E_INJECT", "").split(","):
        key, _, n = part.partition(":")
        if key in ("lose", "dup") and n.isdigit() and int(n) > 0:
            out[key] = int(n)
    return out


class Recorder:
    """ids seen per phase, first/last arrival time, duplicates."""

    def __init__(self):
        self.lock = threading.Lock()
        self.phases = {}
        self.changed = threading.Condition(self.lock)
        # (phase, count) that collect() waits for: only reaching it wakes collect()
        # (it polls every 50 ms for its grace period anyway). A wake-up per message
        # would cost the server a thread switch per delivery, whatever the driver.
        self.awaited = None
        self.inject = _inject()
        self.seen = 0

    def record(self, phase, ident):
        now = time.monotonic()
        if self.inject and not phase.startswith("warm-"):
            with self.lock:
                self.seen += 1
                n = self.seen
            if "lose" in self.inject and n % self.inject["lose"] == 0:
                return
            if "dup" in self.inject and n % self.inject["dup"] == 0:
                self._record(phase, ident, now)
        self._record(phase, ident, now)

    def _record(self, phase, ident, now):
        with self.lock:
            p = self.phases.get(phase)
            if p is None:
                p = self.phases[phase] = {"ids": set(), "dups": 0, "first": now,
                                          "last": now}
            if ident in p["ids"]:
                p["dups"] += 1
            else:
                p["ids"].add(ident)
            p["last"] = now
            if self.awaited == (phase, len(p["ids"])):
                self.changed.notify_all()

    def collect(self, phase, expected, grace, deadline):
        """Wait until ``expected`` unique ids arrived, or nothing new came for ``grace``
        seconds, or ``deadline`` seconds passed; then the figures."""
        end = time.monotonic() + deadline
        with self.lock:
            self.awaited = (phase, expected)
            last_count, last_change = -1, time.monotonic()
            while True:
                p = self.phases.get(phase)
                n = len(p["ids"]) if p else 0
                now = time.monotonic()
                if n >= expected:
                    break
                if n != last_count:
                    last_count, last_change = n, now
                if now - last_change > grace or now > end:
                    break
                self.changed.wait(0.05)
            p = self.phases.pop(phase, None) or {"ids": set(), "dups": 0, "first": None,
                                                 "last": None}
        ids = p["ids"]
        in_range = sum(1 for i in ids if 0 <= i < expected)
        return {"unique": len(ids), "in_range": in_range, "dups": p["dups"],
                "unexpected": len(ids) - in_range, "first": p["first"], "last": p["last"]}


# ------------------------------------------------------------------------------------
# server: RPC servers (one per topic) and optionally a notification listener
# ------------------------------------------------------------------------------------

def run_server(a):
    import oslo_messaging
    conf = _setup_oslo()
    rec = Recorder()

    class Endpoint:
        def echo(self, ctxt, phase, id, data):
            rec.record(phase, id)
            return data

        def record(self, ctxt, phase, id, data):
            rec.record(phase, id)

    class Notifications:
        def info(self, ctxt, publisher_id, event_type, payload, metadata):
            rec.record(payload["phase"], payload["id"])

    rpc = oslo_messaging.get_rpc_transport(conf, url=a.rpc_url)
    fan = (oslo_messaging.get_rpc_transport(conf, url=a.fanout_url)
           if a.fanout_url and a.fanout_url != a.rpc_url else rpc)
    servers = []
    for topic in a.topics.split(","):
        s = oslo_messaging.get_rpc_server(
            fan if topic.endswith("_fan") else rpc, oslo_messaging.Target(topic=a.prefix + topic, server=a.name), [Endpoint()],
            executor="threading")
        s.start()
        servers.append(s)
    notify = listener = None
    if a.listen:
        notify = oslo_messaging.get_notification_transport(conf, url=a.notify_url)
        listener = oslo_messaging.get_notification_listener(
            notify, [oslo_messaging.Target(topic=a.prefix + "notifications")],
            [Notifications()], executor="threading")
        listener.start()
    _answer({"ok": True, "ready": True, "pid": os.getpid()})
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            c = cmd["cmd"]
            if c == "cpu":
                _answer({"ok": True, "cpu": _cpu(), "t": time.monotonic()})
            elif c == "info":
                _answer(dict(ok=True, **_info(rpc)))
            elif c == "collect":
                _answer(dict(ok=True, **rec.collect(cmd["phase"], cmd["expected"],
                                                     cmd["grace"], cmd["deadline"])))
            elif c == "forget":
                with rec.lock:
                    rec.phases.pop(cmd["phase"], None)
                _answer({"ok": True})
            elif c == "quit":
                break
            else:
                _answer({"ok": False, "error": "unknown command %r" % c})
    finally:
        for s in servers:
            s.stop()
        if listener is not None:
            listener.stop()
        for s in servers:
            s.wait()
        if listener is not None:
            listener.wait()
        rpc.cleanup()
        if fan is not rpc:
            fan.cleanup()
        if notify is not None:
            notify.cleanup()
    _answer({"ok": True, "bye": True})


# ------------------------------------------------------------------------------------
# client: the workloads
# ------------------------------------------------------------------------------------

class Client:
    def __init__(self, a):
        import oslo_messaging
        self.om = oslo_messaging
        conf = _setup_oslo()
        self.rpc = oslo_messaging.get_rpc_transport(conf, url=a.rpc_url)
        self.notify = oslo_messaging.get_notification_transport(conf, url=a.notify_url)
        self.fan = (oslo_messaging.get_rpc_transport(conf, url=a.fanout_url)
                    if a.fanout_url and a.fanout_url != a.rpc_url else self.rpc)
        self.timeout = a.timeout
        self.prefix = a.prefix

    def _rpc_client(self, topic, fanout=False):
        return self.om.get_rpc_client(
            self.fan if fanout else self.rpc, self.om.Target(topic=self.prefix + topic, fanout=fanout), timeout=self.timeout)

    def _run_threads(self, threads, duration, count, one):
        """Call one(worker_state, id) from ``threads`` threads until ``count`` ids are
        taken or ``duration`` seconds pass; ids 0..n-1 are handed out in order."""
        ids = itertools.count()
        stop_at = time.monotonic() + duration
        failed, errors, lock = [], [], threading.Lock()
        taken = [0] * threads

        def run(k):
            state = {}
            while time.monotonic() < stop_at:
                i = next(ids)
                if i >= count:
                    break
                taken[k] += 1
                try:
                    one(state, i)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    with lock:
                        failed.append(i)
                        if len(errors) < 5:
                            errors.append("%s: %s" % (type(e).__name__, e))
        workers = [threading.Thread(target=run, args=(k,), daemon=True)
                   for k in range(threads)]
        t0 = time.monotonic()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        t1 = time.monotonic()
        return {"sent": sum(taken), "failed": len(failed), "failed_ids": failed[:100],
                "errors": errors, "t_start": t0, "t_end": t1}

    def call(self, cmd):
        phase, threads = cmd["phase"], cmd["threads"]
        client = self._rpc_client(cmd.get("topic", "bench"))
        for i in range(cmd.get("warmup", 20)):            # links up, caches warm
            client.call({}, "echo", phase="warm-" + phase, id=i, data=DATA)
        lat = []
        bad = []

        def one(state, i):
            t = time.monotonic()
            r = client.call({}, "echo", phase=phase, id=i, data=DATA)
            lat.append(time.monotonic() - t)                 # list.append: atomic
            if r != DATA:
                bad.append(i)
        res = self._run_threads(threads, cmd["duration"], cmd["count"], one)
        lat.sort()
        res.update(ok=True, calls=len(lat), wrong_replies=len(bad),
                   p50_ms=_percentile(lat, 50) * 1e3 if lat else None,
                   p99_ms=_percentile(lat, 99) * 1e3 if lat else None,
                   mean_ms=sum(lat) / len(lat) * 1e3 if lat else None)
        return res

    def cast(self, cmd):
        phase = cmd["phase"]
        client = self._rpc_client(cmd.get("topic", "bench"), fanout=cmd.get("fanout",
                                                                          False))
        for i in range(cmd.get("warmup", 20)):
            client.cast({}, "record", phase="warm-" + phase, id=i, data=DATA)

        def one(state, i):
            client.cast({}, "record", phase=phase, id=i, data=DATA)
        res = self._run_threads(cmd["threads"], cmd["duration"], cmd["count"], one)
        res["ok"] = True
        return res

    def notify_(self, cmd):
        phase = cmd["phase"]
        notifier = self.om.Notifier(self.notify, publisher_id="bench.client",
                                    driver="messagingv2", topics=[self.prefix + "notifications"])
        for i in range(cmd.get("warmup", 20)):
            notifier.info({}, "bench.event", {"phase": "warm-" + phase, "id": i,
                                              "data": DATA})

        def one(state, i):
            notifier.info({}, "bench.event", {"phase": phase, "id": i, "data": DATA})
        res = self._run_threads(cmd["threads"], cmd["duration"], cmd["count"], one)
        res["ok"] = True
        return res

    def close(self):
        self.rpc.cleanup()
        if self.fan is not self.rpc:
            self.fan.cleanup()
        self.notify.cleanup()


def run_client(a):
    client = Client(a)
    _answer({"ok": True, "ready": True, "pid": os.getpid()})
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            c = cmd["cmd"]
            try:
                if c == "cpu":
                    _answer({"ok": True, "cpu": _cpu(), "t": time.monotonic()})
                elif c == "info":
                    _answer(dict(ok=True, **_info(client.rpc)))
                elif c == "call":
                    _answer(client.call(cmd))
                elif c == "cast":
                    _answer(client.cast(cmd))
                elif c == "notify":
                    _answer(client.notify_(cmd))
                elif c == "quit":
                    break
                else:
                    _answer({"ok": False, "error": "unknown command %r" % c})
            except Exception as e:  # noqa: BLE001 - reported to the orchestrator
                _answer({"ok": False, "error": "%s: %s" % (type(e).__name__, e)})
    finally:
        client.close()
    _answer({"ok": True, "bye": True})


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=("server", "client"))
    ap.add_argument("--rpc-url", required=True)
    ap.add_argument("--notify-url", required=True)
    ap.add_argument("--fanout-url", help="RPC transport for the fanout topic "
                    "(default --rpc-url)")
    ap.add_argument("--topics", default="bench")
    ap.add_argument("--prefix", default="",
                    help="prepended to every topic: drivers sharing an intermediary "
                         "must not share addresses")
    ap.add_argument("--name", default="s1")
    ap.add_argument("--listen", action="store_true")
    ap.add_argument("--timeout", type=float, default=30)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)
    # Keep stdout for the protocol: libraries that print go to stderr.
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    global _answer

    def _answer_real(obj):
        real_stdout.write(json.dumps(obj) + "\n")
        real_stdout.flush()
    _answer = _answer_real
    try:
        (run_server if a.role == "server" else run_client)(a)
    except Exception as e:  # noqa: BLE001
        _answer({"ok": False, "error": "%s: %s" % (type(e).__name__, e)})
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
