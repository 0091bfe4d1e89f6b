"""An oslo.messaging peer on the ORIGINAL amqp driver (14.9.3, impl_amqp1 + pyngus), for
the interoperability tests (tests/interop/test_interop.py). Never imports fastamqp.

The JSON request is the first line of stdin. ``"mode"`` selects what to do:

client  Runs ``"ops"`` in order against ``"rpc_url"`` / ``"notify_url"`` and writes one
        JSON answer ``{"results": [...]}`` on stdout. Ops:
          {"op": "call"|"cast", "topic", "server"?, "fanout"?, "exchange"?,
           "method", "args": {...}, "ctxt"?: {...}, "timeout"?: s,
           "call_monitor_timeout"?: s}
          {"op": "notify", "topic"?, "priority", "publisher_id", "event_type",
           "payload", "ctxt"?, "driver"?: "messagingv2"|"messaging"}
          {"op": "sleep", "seconds"}
        A result is {"ok": value} or {"error": {"type", "module", "message",
        "exc_type", "value"}}, plus "elapsed" (seconds).

server  Starts an RPC server (when "rpc_url" is given: Target(topic, server), endpoint
        with add/echo/record/fail/fail_custom/context_echo/whoami/slow) and a
        notification listener (when "notify_url" and "notify_topics" are given;
        Target.exchange "notify_exchange"), prints the line ``ready``, then
        prints one ``event {json}`` line per cast/notification received, and serves
        until stdin closes, a line ``stop`` arrives or SIGTERM. It then stops
        cleanly and prints ``result {json}`` with everything it received.

Options for the original driver go into the URL query (e.g. ``?link_retry_delay=1``).

By default the script runs with native threads (executor "threading") and no eventlet
monkey-patching: oslo.messaging 14.9.3 imports eventlet (through oslo.service) but only
its test package patches, and the amqp1 driver runs its own I/O thread, so none is
needed. With ``--eventlet`` it calls eventlet.monkey_patch() first and servers use the
"eventlet" executor, as most OpenStack services of that era ran. stdin is then only
ever read once select() says it is readable: a blocking read of a pipe would stall
eventlet's hub, and with it the driver's I/O greenthread (and eventlet's own green
select never reports the stdin pipe readable: the script polls it with the real one).
"""
import sys

if "--eventlet" in sys.argv[1:]:
    import eventlet
    eventlet.monkey_patch()
    EXECUTOR = "eventlet"
else:
    EXECUTOR = "threading"

import json  # noqa: E402
import os  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import oslo_messaging  # noqa: E402
from oslo_config import cfg  # noqa: E402

_out_lock = threading.Lock()


class StdinLines:
    """Lines from stdin through select() and os.read() (see the module docstring)."""

    def __init__(self):
        self.fd = sys.stdin.fileno()
        self.buffer = b""
        self.eof = False

    def readline(self, timeout=None):
        """The next line (without newline); None at EOF or when ``timeout`` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer and not self.eof:
            # A zero-timeout poll with the unpatched select, then a (green) sleep:
            # eventlet's green select never reports this pipe readable.
            ready, _, _ = _select([self.fd], [], [], 0)
            if not ready:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                time.sleep(0.02)
                continue
            data = os.read(self.fd, 4096)
            if not data:
                self.eof = True
            self.buffer += data
        if b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            return line.decode()
        if self.buffer:
            line, self.buffer = self.buffer, b""
            return line.decode()
        return None


if EXECUTOR == "eventlet":
    _select = eventlet.patcher.original("select").select
else:
    _select = select.select
STDIN = StdinLines()


def emit(line):
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def error_info(exc):
    return {"type": type(exc).__name__, "module": type(exc).__module__,
            "message": str(exc),
            # oslo_messaging.RemoteError: the remote class that was not allowed.
            "exc_type": getattr(exc, "exc_type", None),
            "value": getattr(exc, "value", None)}


class InteropError(Exception):
    """What ``fail_custom`` raises: a class the caller may not import, so the caller
    must get oslo_messaging.RemoteError naming it."""


class RpcEndpoint:
    def __init__(self, received, name):
        self.received = received
        self.name = name

    def whoami(self, ctxt):
        return self.name

    def slow(self, ctxt, seconds):
        time.sleep(seconds)
        return "done"

    def fail_custom(self, ctxt, message):
        raise InteropError(message)

    def add(self, ctxt, a, b):
        return a + b

    def echo(self, ctxt, data):
        return data

    def context_echo(self, ctxt):
        return ctxt

    def record(self, ctxt, value):
        event = {"kind": "cast", "value": value, "ctxt": ctxt}
        self.received.append(event)
        emit("event " + json.dumps(event))

    def fail(self, ctxt, message):
        raise ValueError(message)


class NotifyEndpoint:
    def __init__(self, received):
        self.received = received

    def _record(self, priority, ctxt, publisher_id, event_type, payload, metadata):
        event = {"kind": "notification", "priority": priority, "ctxt": ctxt,
                 "publisher_id": publisher_id, "event_type": event_type,
                 "payload": payload}
        self.received.append(event)
        emit("event " + json.dumps(event))

    def __getattr__(self, priority):
        if priority in ("audit", "debug", "info", "warn", "error", "critical",
                        "sample"):
            return lambda *a: self._record(priority, *a)
        raise AttributeError(priority)


def make_conf():
    # The global CONF: 14.9.3's RPC client reads [oslo_messaging_metrics], which is
    # registered on cfg.CONF only (a private ConfigOpts fails with NoSuchOptError).
    conf = cfg.CONF
    conf([], project="fastamqp-interop-original")
    # Every RPC client starts a non-daemon metrics "send_loop" thread that lingers for
    # metrics_thread_stop_timeout (10 s) even with metrics disabled, holding up exit.
    conf.set_override("metrics_thread_stop_timeout", 0, group="oslo_messaging_metrics")
    return conf


class RequestContext(dict):
    """A context the notifier keeps: oslo's Notifier replaces a plain dict context
    with {} (_sanitize_context) and sends ``redacted_copy()`` of anything else."""

    def redacted_copy(self):
        return dict(self)


def run_client(request):
    conf = make_conf()
    rpc = notify = None
    results = []
    try:
        if request.get("rpc_url"):
            rpc = oslo_messaging.get_rpc_transport(conf, url=request["rpc_url"])
        if request.get("notify_url"):
            notify = oslo_messaging.get_notification_transport(
                conf, url=request["notify_url"])
        for op in request["ops"]:
            started = time.monotonic()
            try:
                if op["op"] in ("call", "cast"):
                    target = oslo_messaging.Target(
                        topic=op["topic"], server=op.get("server"),
                        fanout=op.get("fanout", False), exchange=op.get("exchange"))
                    client = oslo_messaging.get_rpc_client(
                        rpc, target, timeout=op.get("timeout", 10),
                        call_monitor_timeout=op.get("call_monitor_timeout"))
                    method = getattr(client, op["op"])
                    value = method(op.get("ctxt", {}), op["method"], **op["args"])
                    result = {"ok": value}
                elif op["op"] == "notify":
                    notifier = oslo_messaging.Notifier(
                        notify, publisher_id=op["publisher_id"],
                        driver=op.get("driver", "messagingv2"),
                        topics=[op.get("topic", "notifications")])
                    getattr(notifier, op["priority"])(
                        RequestContext(op.get("ctxt", {})), op["event_type"],
                        op["payload"])
                    result = {"ok": None}
                elif op["op"] == "sleep":
                    time.sleep(op["seconds"])
                    result = {"ok": None}
                else:
                    raise ValueError("unknown op %r" % op["op"])
            except Exception as exc:  # reported to the test, which judges it
                result = {"error": error_info(exc)}
            result["elapsed"] = time.monotonic() - started
            results.append(result)
    finally:
        for transport in (rpc, notify):
            if transport is not None:
                transport.cleanup()
    json.dump({"results": results}, sys.stdout)
    sys.stdout.flush()


def run_server(request):
    conf = make_conf()
    received = []
    servers = []
    transports = []
    stop = threading.Event()

    signal.signal(signal.SIGTERM, lambda *a: stop.set())

    if request.get("rpc_url"):
        transport = oslo_messaging.get_rpc_transport(conf, url=request["rpc_url"])
        transports.append(transport)
        target = oslo_messaging.Target(topic=request.get("topic", "calc"),
                                       server=request.get("server", "host1"),
                                       exchange=request.get("exchange"))
        servers.append(oslo_messaging.get_rpc_server(
            transport, target, [RpcEndpoint(received, target.server)],
            executor=EXECUTOR))
    if request.get("notify_url") and request.get("notify_topics"):
        transport = oslo_messaging.get_notification_transport(
            conf, url=request["notify_url"])
        transports.append(transport)
        targets = [oslo_messaging.Target(topic=t, exchange=request.get("notify_exchange"))
                   for t in request["notify_topics"]]
        servers.append(oslo_messaging.get_notification_listener(
            transport, targets, [NotifyEndpoint(received)], executor=EXECUTOR))
    for server in servers:
        server.start()
    emit("ready")
    # Serve until stdin says "stop" or closes, or SIGTERM.
    while not stop.is_set():
        line = STDIN.readline(timeout=0.2)
        if (line is not None and line.strip() == "stop") or STDIN.eof:
            break
    for server in servers:
        server.stop()
    for server in servers:
        server.wait()
    for transport in transports:
        transport.cleanup()
    emit("result " + json.dumps({"received": received}))


def main():
    request = json.loads(STDIN.readline())
    try:
        if request["mode"] == "client":
            run_client(request)
        elif request["mode"] == "server":
            run_server(request)
        else:
            raise SystemExit("unknown mode %r" % request["mode"])
    except Exception:
        traceback.print_exc()
        raise SystemExit(1)


if __name__ == "__main__":
    main()
