"""``fastamqp demo``: oslo.messaging RPC and notifications over fastamqp, through the
embedded intermediary, with nothing else installed.

It starts the intermediary in-process -- a router for RPC (as qdrouterd would be) and a
broker for notifications (as qpidd would be), the "hybrid" layout of the deployment
guide -- then runs an oslo RPC server and client and a notifier and listener, and
prints what happened and how fast, for each engine side by side. Each engine runs in a
child process (``FASTAMQP_PUREPYTHON=1`` for the pure-Python one) so that they do not
share anything but the intermediary: the C relay (docs/relay.md) when it is built, so
that the figures measure the driver rather than the intermediary, else the pure-Python
one.
"""
import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import threading
import time

PAYLOAD = "x" * 700   # with the envelope, about 1 KiB on the wire


def _percentile(samples, fraction):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


class _Endpoint:
    def __init__(self, expected_casts):
        self.casts = 0
        self.expected_casts = expected_casts
        self.all_casts = threading.Event()
        self.lock = threading.Lock()

    def echo(self, ctxt, data):
        return data

    def record(self, ctxt, data):
        with self.lock:
            self.casts += 1
            if self.casts == self.expected_casts:
                self.all_casts.set()


class _Notifications:
    def __init__(self, expected):
        self.count = 0
        self.expected = expected
        self.done = threading.Event()
        self.lock = threading.Lock()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        with self.lock:
            self.count += 1
            if self.count == self.expected:
                self.done.set()


def run_one(calls, casts, notifications, router_url, broker_url):
    """One engine, in this process, through the intermediaries at these URLs: returns
    the measurements as a dict."""
    import oslo_messaging
    from oslo_config import cfg

    import fastamqp
    from fastamqp import engine

    conf = cfg.CONF
    conf([], project="fastamqp-demo")
    results = {"engine": fastamqp.engine_name(),
               "connection_engine": engine.Connection.__module__}
    rpc = oslo_messaging.get_rpc_transport(conf, url=router_url)
    notify = oslo_messaging.get_notification_transport(conf, url=broker_url)
    endpoint = _Endpoint(casts)
    server = oslo_messaging.get_rpc_server(
        rpc, oslo_messaging.Target(topic="demo", server="server1"), [endpoint])
    server.start()
    try:
        client = oslo_messaging.get_rpc_client(
            rpc, oslo_messaging.Target(topic="demo"), timeout=30)
        client.call({}, "echo", data="warm-up")
        latencies = []
        started = time.monotonic()
        for _ in range(calls):
            t0 = time.monotonic()
            assert client.call({}, "echo", data=PAYLOAD) == PAYLOAD
            latencies.append(time.monotonic() - t0)
        elapsed = time.monotonic() - started
        results["calls"] = calls
        results["calls_per_s"] = calls / elapsed
        results["call_p50_ms"] = _percentile(latencies, 0.50) * 1000
        results["call_p99_ms"] = _percentile(latencies, 0.99) * 1000
        results["call_mean_ms"] = statistics.fmean(latencies) * 1000

        started = time.monotonic()
        for _ in range(casts):
            client.cast({}, "record", data=PAYLOAD)
        delivered = endpoint.all_casts.wait(60)
        elapsed = time.monotonic() - started
        results["casts"] = casts
        results["casts_delivered"] = endpoint.casts
        results["casts_per_s"] = endpoint.casts / elapsed if delivered else 0.0
    finally:
        server.stop()
        server.wait()

    listener_endpoint = _Notifications(notifications)
    listener = oslo_messaging.get_notification_listener(
        notify, [oslo_messaging.Target(topic="notifications")], [listener_endpoint])
    listener.start()
    try:
        notifier = oslo_messaging.Notifier(notify, publisher_id="demo.host1",
                                           driver="messagingv2",
                                           topics=["notifications"])
        started = time.monotonic()
        for i in range(notifications):
            notifier.info({}, "demo.event", {"n": i, "data": PAYLOAD})
        done = listener_endpoint.done.wait(60)
        elapsed = time.monotonic() - started
        results["notifications"] = notifications
        results["notifications_delivered"] = listener_endpoint.count
        results["notifications_per_s"] = (listener_endpoint.count / elapsed
                                          if done else 0.0)
    finally:
        listener.stop()
        listener.wait()
    rpc.cleanup()
    notify.cleanup()
    return results


_ROUTER_COUNTERS = ("received", "forwarded", "released", "dropped")
_BROKER_COUNTERS = ("received", "enqueued", "acknowledged")


def _intermediaries():
    """(router, broker, description): the C relay when built, else the Python one."""
    from fastamqp.intermediary import Intermediary
    from fastamqp.intermediary import relay
    if relay.available():
        return (relay.Relay(mode="router"), relay.Relay(mode="broker"),
                "the C relay (fastamqp/intermediary/fa_relay.c, docs/relay.md)")
    return (Intermediary(mode="router"), Intermediary(mode="broker"),
            "the pure-Python intermediary (no C relay in this installation)")


def _child(engine_name, args, router, broker):
    env = dict(os.environ)
    env.pop("FASTAMQP_PUREPYTHON", None)
    if engine_name == "python":
        env["FASTAMQP_PUREPYTHON"] = "1"
    command = [sys.executable, "-m", "fastamqp.tools.demo", "--child", "--calls",
               str(args.calls), "--casts", str(args.casts), "--notifications",
               str(args.notifications), "--router-url", router.url,
               "--broker-url", broker.url]
    before = (router.counters, broker.counters)
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"the {engine_name} run failed:\n{out.stderr[-3000:]}")
    results = json.loads(out.stdout.strip().splitlines()[-1])
    # What this run alone put through the shared intermediaries.
    results["router_counters"] = {k: router.counters[k] - before[0][k]
                                  for k in _ROUTER_COUNTERS}
    results["broker_counters"] = {k: broker.counters[k] - before[1][k]
                                  for k in _BROKER_COUNTERS}
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastamqp demo", description=__doc__)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--casts", type=int, default=2000)
    parser.add_argument("--notifications", type=int, default=2000)
    parser.add_argument("--engines", default="c,python",
                        help="comma-separated: c, python (default both)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--router-url", help=argparse.SUPPRESS)
    parser.add_argument("--broker-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import logging
        logging.basicConfig(level=logging.ERROR)
        print(json.dumps(run_one(args.calls, args.casts, args.notifications,
                                 args.router_url, args.broker_url)))
        return 0

    print("fastamqp demo: oslo.messaging RPC through the embedded router (qdrouterd "
          "emulation) and\nnotifications through the embedded broker (qpidd emulation), "
          "each engine in its own process\n")
    runs = []
    engines = [name.strip() for name in args.engines.split(",")]
    if "c" in engines and importlib.util.find_spec("fastamqp._core") is None:
        print("(skipping the c engine: this installation has no C extension)")
        engines.remove("c")
    router, broker, intermediary = _intermediaries()
    print(f"intermediary: {intermediary}", flush=True)
    with router, broker:
        for name in engines:
            print(f"running the {name} engine: {args.calls} calls, {args.casts} casts, "
                  f"{args.notifications} notifications ...", flush=True)
            runs.append(_child(name, args, router, broker))
    failures = 0
    print()
    rows = [("engine (codec)", lambda r: r["engine"]),
            ("connection engine", lambda r: r["connection_engine"].rsplit(".", 2)[-2]
             + "." + r["connection_engine"].rsplit(".", 1)[-1]),
            ("calls/s (1 client)", lambda r: f"{r['calls_per_s']:.0f}"),
            ("call latency p50 ms", lambda r: f"{r['call_p50_ms']:.2f}"),
            ("call latency p99 ms", lambda r: f"{r['call_p99_ms']:.2f}"),
            ("casts/s delivered", lambda r: f"{r['casts_per_s']:.0f}"),
            ("casts delivered", lambda r: f"{r['casts_delivered']}/{r['casts']}"),
            ("notifications/s delivered", lambda r: f"{r['notifications_per_s']:.0f}"),
            ("notifications delivered",
             lambda r: f"{r['notifications_delivered']}/{r['notifications']}"),
            ("router: received/forwarded",
             lambda r: f"{r['router_counters']['received']}/"
                       f"{r['router_counters']['forwarded']}"),
            ("broker: enqueued/acknowledged",
             lambda r: f"{r['broker_counters']['enqueued']}/"
                       f"{r['broker_counters']['acknowledged']}")]
    width = max(len(label) for label, _ in rows)
    for label, get in rows:
        print(f"  {label:{width}}  " + "  ".join(f"{get(r):>16}" for r in runs))
    for r in runs:
        failures += r["casts_delivered"] != r["casts"]
        failures += r["notifications_delivered"] != r["notifications"]
    print("\nThe 'c' run is the C engine (native I/O thread, C codec); the 'python' run "
          "the pure-Python\nengine on pyngus. Both went through " + intermediary + ";"
          "\nthe rates include oslo.messaging's own layers, client and server in one "
          "process: see\ndocs/benchmarks.md for the side-by-side comparison with the "
          "original driver.")
    print("demo: " + ("everything sent was delivered" if not failures
                      else f"{failures} LOSSES"))
    return 1 if failures else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
