#!/usr/bin/env python3
"""Engine-level benchmark: fastamqp's connection engines next to raw Proton C.

    scripts/setup-bench                       # builds build/bench/{send,receive}
    .venv/bin/python benchmarks/engine_floor.py [--count N] [--calls N] [--json out.json]

Everything goes through fastamqp's embedded intermediary (``python -m
fastamqp.intermediary``), started in its own process so that it does not share a GIL
with what is measured, on a free port of 127.0.0.1 (port 0, read back from its banner),
one per mode, stopped at the end. Every client runs in its own process too (a crashing
engine fails its row, not the run), and imports the same fastamqp as this script.

* One-way throughput: messages/s at the receiver, from its first message to its last,
    - raw Proton C: the ``send`` and ``receive`` example programs of
      libqpid-proton11-dev-examples (unsettled sends pipelined on credit; their message
      is the example's ``{"sequence": n}`` map, 46 bytes -- they send nothing else);
    - each engine: a sender Connection (``--threads`` threads calling ``send``,
      unsettled, then pre-settled) and a receiver Connection subscribed to the same
      address that decodes and settles each delivery; the messages are ~1 KiB RPC
      requests, encoded beforehand with ``fastamqp.codec.encode_request``;
  through a broker (store and forward) and a router (receiver attached first).
* Request/response at the engine level: ``reply_address`` + ``expect_reply`` + ``send``
  (unsettled, as the driver's rpc-call) against a server process that settles the
  request and answers with ``codec.encode_reply`` (pre-settled, as rpc-reply): latency
  p50/p99 and calls/s with one caller, then with ``--threads`` concurrent callers.
* The ratio of each engine's one-way throughput to raw Proton C's (same mode), and the
  CPU each process spent per message: the intermediary near one core busy is the bound.

Engines: ``python`` is ``fastamqp.engine.pure.connection.Connection``; ``c`` is
``fastamqp.engine.c.connection.Connection`` and is included whenever it imports.

Every receiver counts message ids (sequence numbers for raw Proton C), every caller
checks the correlation of its reply and the server counts request ids: a lost or
duplicated message, an outcome other than accepted or a wrong reply fails the run (exit
status 1, "FAILED" rows) after the table is printed. Each case sends for ``--budget``
seconds at most (a stalling engine sends fewer messages, all checked). ``--repeat N``
keeps the best of N runs of each case (a shared machine only ever slows a run down).

``--profile-intermediary FILE`` runs the intermediary under yappi (all threads, CPU
clock; several times slower) and writes FILE.<mode> (pstats) and FILE.<mode>.txt.
"""
import argparse
import itertools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import peers  # noqa: E402
BENCH_BIN = os.path.join(ROOT, "build", "bench")
ENGINES = {"python": ("fastamqp.engine.pure.connection", "Connection"),
           "c": ("fastamqp.engine.c.connection", "Connection")}
ONEWAY_ADDRESS = {"broker": "unicast.bench.oneway", "router":
                  "openstack.org/om/rpc/anycast/bench/oneway"}
RPC_ADDRESS = {"broker": "unicast.bench.rpc", "router":
               "openstack.org/om/rpc/anycast/bench/rpc"}
TIMEOUT = 60.0


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------
# Helpers shared by the orchestrator and the workers
# ---------------------------------------------------------------------------------

def _die_with_parent():
    """In a child, before exec: get SIGTERM when the benchmark dies (Linux)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        pass


def _self_cpu():
    t = os.times()
    return t.user + t.system


def _percentile(sorted_values, p):
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _fastamqp_path():
    """The directory the fastamqp in use comes from, for the child processes."""
    import fastamqp
    return os.path.dirname(os.path.dirname(os.path.abspath(fastamqp.__file__)))


def _child_env():
    env = dict(os.environ)
    path = _fastamqp_path()
    env["PYTHONPATH"] = os.pathsep.join([path] + [p for p in env.get(
        "PYTHONPATH", "").split(os.pathsep) if p and p != path])
    env.setdefault("PYTHONWARNINGS", "ignore::RuntimeWarning")
    return env


# ---------------------------------------------------------------------------------
# Workers (each a child process; JSON lines on stdout, commands on stdin)
# ---------------------------------------------------------------------------------

def _emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def _connect(engine, host, port, name):
    import importlib
    from fastamqp.engine.interface import ConnectionSettings, Host
    module, attr = ENGINES[engine]
    cls = getattr(importlib.import_module(module), attr)
    conn = cls([Host(host, port)],
               ConnectionSettings(container_id="bench-%s-%s-%d" % (engine, name,
                                                                    os.getpid())))
    conn.start()
    conn.wait_active(10)
    return conn


def _stdin_watcher():
    """An event set when the orchestrator writes 'stop [N]' (or closes our stdin);
    ``stop.count`` is N, the number of messages actually sent, when given."""
    stop = threading.Event()
    stop.count = None

    def watch():
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["stop"]:
                if len(words) > 1:
                    stop.count = int(words[1])
                break
        stop.set()
    threading.Thread(target=watch, daemon=True).start()
    return stop


def _payload_factory(address, size):
    """encode_request(address, ~1 KiB request, context, message_id=...) padded so that
    the encoded message is ``size`` bytes, about (ids of up to 8 characters)."""
    from fastamqp import codec
    from fastamqp.tools.codec_check import sample_context, sample_request
    ctx = sample_context()
    req = sample_request(size)
    probe = len(codec.encode_request(address, req, ctx, message_id="00000000"))
    if probe != size and len(req["args"]["data"]) + size - probe >= 0:
        req = dict(req, args={"data": "x" * (len(req["args"]["data"]) + size - probe)})

    def make(message_id, **kw):
        return codec.encode_request(address, req, ctx, message_id=message_id, **kw)
    return make


def worker_recv(a):
    from fastamqp import codec
    from fastamqp.engine.interface import Outcome
    stop = _stdin_watcher()
    conn = _connect(a.engine, a.host, a.port, "recv")
    sub = conn.subscribe([a.address], a.credit)
    time.sleep(0.3)     # let the attach complete (a router grants credit after it)
    _emit(event="ready")
    seen = {}
    dups = bad = warm = 0
    first = last = None
    cpu0 = _self_cpu()
    hard = time.monotonic() + a.timeout
    complete_at = stop_at = None
    while True:
        now = time.monotonic()
        if now > hard:
            break
        if complete_at is None and stop.count is not None and len(seen) >= stop.count:
            complete_at = now
        if complete_at is not None and now - complete_at > a.grace:
            break      # all there; the grace period catches late duplicates
        if stop.is_set():
            stop_at = stop_at or now
            if now - (last or stop_at) > a.idle and now - stop_at > a.idle:
                break  # the sender is done and nothing more comes: lost
        batch = sub.poll(256, 0.1)
        if not batch:
            continue
        t = time.monotonic()
        first = first or t
        for d in batch:
            try:
                mid = codec.decode(d.payload).message_id
            except Exception:
                bad += 1
                mid = None
            sub.settle(d, Outcome.ACCEPTED)
            if mid == "warmup":
                warm += 1
                continue
            if mid in seen:
                dups += 1
            else:
                seen[mid] = 1
                last = t
        want = a.count if stop.count is None else stop.count
        if complete_at is None and len(seen) >= want:
            complete_at = time.monotonic()
    cpu = _self_cpu() - cpu0
    expected = {str(i) for i in range(a.count if stop.count is None else stop.count)}
    got = set(seen)
    _emit(event="done", received=len(seen) + dups, unique=len(got & expected),
          missing=len(expected - got), unexpected=len(got - expected), duplicates=dups,
          undecodable=bad, warmup=warm, first=first, last=last, cpu=cpu)
    sub.close()
    conn.close(5)


def worker_send(a):
    from fastamqp.engine.interface import Outcome
    conn = _connect(a.engine, a.host, a.port, "send")
    make = _payload_factory(a.address, a.size)
    payloads = [make(str(i)) for i in range(a.count)]
    # Test hook proving the loss/duplicate check: FASTAMQP_BENCH_INJECT="lose:I,dup:J"
    # sends message J in place of message I.
    inject = dict(x.split(":") for x in os.environ.get("FASTAMQP_BENCH_INJECT",
                                                      "").split(",") if ":" in x)
    if "lose" in inject and "dup" in inject:
        payloads[int(inject["lose"])] = payloads[int(inject["dup"])]
    warm = make("warmup")
    # One unsettled send first: attaches the sender link and waits for credit.
    r = conn.send(a.address, warm, presettled=False, deadline=time.monotonic() + 10)
    if r.outcome is not Outcome.ACCEPTED:
        raise BenchError("warm-up send: %s" % (r,))
    outcomes = {}
    errors = []
    lock = threading.Lock()
    indexes = iter(range(a.count))
    taken = [0]
    stop_at = [None]

    def run():
        local = {}
        while True:
            with lock:
                # Past the time budget, take no more: what was sent is range(taken).
                i = None if time.monotonic() > stop_at[0] else next(indexes, None)
                if i is not None:
                    taken[0] = i + 1
            if i is None:
                break
            try:
                res = conn.send(a.address, payloads[i], presettled=a.presettled,
                                deadline=time.monotonic() + 30)
                local[res.outcome.value] = local.get(res.outcome.value, 0) + 1
            except Exception as exc:  # noqa: BLE001 - counted and reported
                if len(errors) < 5:
                    errors.append("%s: %s" % (type(exc).__name__, exc))
                local["error"] = local.get("error", 0) + 1
        with lock:
            for k, v in local.items():
                outcomes[k] = outcomes.get(k, 0) + v
    threads = [threading.Thread(target=run) for _ in range(a.threads)]
    _emit(event="ready")
    if sys.stdin.readline().strip() != "go":
        return
    cpu0 = _self_cpu()
    t0 = time.monotonic()
    stop_at[0] = t0 + a.budget
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t1 = time.monotonic()
    cpu = _self_cpu() - cpu0
    _emit(event="done", t0=t0, t1=t1, sent=taken[0], outcomes=outcomes, errors=errors,
          cpu=cpu, size=len(payloads[0]) if payloads else 0)
    conn.close(5)


def worker_rpc_server(a):
    from fastamqp import codec
    from fastamqp.engine.interface import Outcome
    stop = _stdin_watcher()
    conn = _connect(a.engine, a.host, a.port, "server")
    sub = conn.subscribe([a.address], a.credit)
    time.sleep(0.3)
    _emit(event="ready")
    seen = set()
    counts = {"served": 0, "duplicates": 0, "errors": 0}
    lock = threading.Lock()
    response = {"result": "y" * 900}
    errors = []

    def serve():
        while not stop.is_set():
            for d in sub.poll(1, 0.1):
                sub.settle(d, Outcome.ACCEPTED)   # as an oslo server: ack, then answer
                try:
                    req = codec.decode(d.payload)
                    with lock:
                        if req.message_id in seen:
                            counts["duplicates"] += 1
                        seen.add(req.message_id)
                    conn.send(req.reply_to,
                              codec.encode_reply(req.reply_to, req.message_id,
                                                 response=response),
                              presettled=True, deadline=time.monotonic() + 10)
                    with lock:
                        counts["served"] += 1
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    with lock:
                        counts["errors"] += 1
                        if len(errors) < 5:
                            errors.append("%s: %s" % (type(exc).__name__, exc))
    cpu0 = _self_cpu()
    threads = [threading.Thread(target=serve) for _ in range(a.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _emit(event="done", cpu=_self_cpu() - cpu0, errors_text=errors, **counts)
    sub.close()
    conn.close(5)


def worker_rpc_client(a):
    from fastamqp import codec
    from fastamqp.engine.interface import Outcome
    conn = _connect(a.engine, a.host, a.port, "client")
    reply_to = conn.reply_address(time.monotonic() + 10)
    make = _payload_factory(a.address, a.size)
    ids = itertools.count()
    errors = []
    bad = {"wrong_reply": 0, "errors": 0, "not_accepted": 0}
    bad_lock = threading.Lock()

    def count_bad(kind):
        with bad_lock:
            bad[kind] += 1

    def call():
        mid = "call-%d" % next(ids)
        payload = make(mid, reply_to=reply_to)
        t = time.monotonic()
        deadline = t + 10
        waiter = conn.expect_reply(mid)
        res = conn.send(a.address, payload, presettled=False, deadline=deadline)
        if res.outcome is not Outcome.ACCEPTED:
            waiter.cancel()
            count_bad("not_accepted")
            return None
        reply = codec.decode(waiter.wait(deadline))
        dt = time.monotonic() - t
        if reply.correlation_id != mid or reply.response != {"result": "y" * 900}:
            count_bad("wrong_reply")
        return dt

    for _ in range(5):   # warm-up: attaches the sender link
        call()
    results = []
    for concurrency in sorted({1, a.threads}):
        lat = []
        lock = threading.Lock()
        remaining = [a.calls]
        stop_at = time.monotonic() + a.budget

        def run():
            while True:
                with lock:
                    if remaining[0] <= 0 or time.monotonic() > stop_at:
                        return
                    remaining[0] -= 1
                try:
                    dt = call()
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    count_bad("errors")
                    with lock:
                        if len(errors) < 5:
                            errors.append("%s: %s" % (type(exc).__name__, exc))
                    continue
                if dt is not None:
                    with lock:
                        lat.append(dt)
        threads = [threading.Thread(target=run) for _ in range(concurrency)]
        _emit(event="phase", concurrency=concurrency)   # the intermediary's CPU now
        cpu0 = _self_cpu()
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        lat.sort()
        results.append(dict(concurrency=concurrency, calls=len(lat), elapsed=elapsed,
                            attempted=a.calls - remaining[0],
                            rate=len(lat) / elapsed if elapsed > 0 else None,
                            p50_ms=_percentile(lat, 50) * 1e3 if lat else None,
                            p99_ms=_percentile(lat, 99) * 1e3 if lat else None,
                            cpu=_self_cpu() - cpu0, t0=t0, t1=t0 + elapsed))
    _emit(event="done", results=results, errors_text=errors, **bad)
    conn.close(5)


WORKERS = {"recv": worker_recv, "send": worker_send, "rpc-server": worker_rpc_server,
           "rpc-client": worker_rpc_client}


# ---------------------------------------------------------------------------------
# The orchestrator
# ---------------------------------------------------------------------------------

class Proc:
    """A child process speaking JSON lines on stdout."""

    def __init__(self, argv, env=None, stdin=True, stdout=None, cwd=None):
        self.argv = argv
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else
                                     subprocess.DEVNULL,
                                     stdout=stdout or subprocess.PIPE,
                                     stderr=self.stderr, env=env, cwd=cwd, text=True,
                                     preexec_fn=_die_with_parent)
        self.pid = self.proc.pid
        self.rusage = None

    def read_event(self, timeout):
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise BenchError("%s: no answer within %.0f s%s"
                                 % (self.name, timeout, self.stderr_tail()))
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if r:
                line = self.proc.stdout.readline()
                if not line:
                    self.wait(5)
                    raise BenchError("%s exited (status %s)%s" % (
                        self.name, self.proc.returncode, self.stderr_tail()))
                line = line.strip()
                if line.startswith("{"):
                    return json.loads(line)

    @property
    def name(self):
        if "--worker" in self.argv:
            i = self.argv.index("--worker")
            return "worker %s (%s engine)" % (self.argv[i + 1], self.argv[i + 3])
        return os.path.basename(self.argv[0])

    def tell(self, text):
        try:
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def wait(self, timeout):
        """Wait for exit, keeping the child's rusage (CPU seconds)."""
        end = time.monotonic() + timeout
        while self.proc.returncode is None:
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                self.rusage = ru.ru_utime + ru.ru_stime
                break
            if time.monotonic() > end:
                return None
            time.sleep(0.005)
        return self.proc.returncode

    def kill(self):
        if self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            self.wait(5)

    def stderr_tail(self, n=1500):
        self.stderr.seek(0)
        text = self.stderr.read().strip()
        return (":\n" + text[-n:]) if text else ""


def start_intermediary(mode, profile=None, engine="python", url=None):
    """The intermediary for ``mode``: the one at ``url`` (not started here), or the
    embedded one in its own process (under yappi with ``profile``)."""
    try:
        if url:
            return peers.External(mode, url)
        argv = [sys.executable, "-c", _PROFILED_INTERMEDIARY, profile] if profile \
            else None
        return peers.Embedded(mode, engine=engine, env=_child_env(), argv=argv)
    except peers.PeerError as e:
        raise BenchError(str(e)) from None


_PROFILED_INTERMEDIARY = r"""
import sys, yappi
out = sys.argv[1]
del sys.argv[1]
yappi.set_clock_type("cpu")
yappi.start(builtins=True)
from fastamqp.intermediary.__main__ import main
try:
    main(sys.argv[1:])
finally:
    yappi.stop()
    stats = yappi.get_func_stats()
    stats.save(out, type="pstat")
    import pstats
    with open(out + ".txt", "w") as f:
        pstats.Stats(out, stream=f).sort_stats("tottime").print_stats(40)
"""


def worker_argv(role, engine, im, address, **kw):
    argv = [sys.executable, os.path.abspath(__file__), "--worker", role,
            "--engine", engine, "--host", im.host, "--port", str(im.port),
            "--address", address]
    for k, v in kw.items():
        if v is True:
            argv.append("--" + k.replace("_", "-"))
        elif v is not False and v is not None:
            argv += ["--" + k.replace("_", "-"), str(v)]
    return argv


class Bench:
    def __init__(self, args):
        self.args = args
        self.rows = []          # one-way
        self.rpc_rows = []
        self.failures = []
        self.env = _child_env()

    def fail(self, what, why):
        self.failures.append("%s: %s" % (what, why))
        print("  FAILED %s: %s" % (what, why), file=sys.stderr, flush=True)

    # -- raw Proton C -----------------------------------------------------------
    def raw_oneway(self, im, count):
        send = os.path.join(BENCH_BIN, "send")
        recv = os.path.join(BENCH_BIN, "receive")
        label = "raw Proton C send -> receive (%s)" % im.mode
        address = ONEWAY_ADDRESS[im.mode] + ".raw"
        # receive prints every message body; line-buffered (stdbuf), its output
        # arrives as it receives, and the reader notes when the first and the last
        # message came: the same receiver-side span as for the engines.
        argv = [recv, im.host, str(im.port), address, str(count)]
        if _STDBUF:
            argv = [_STDBUF, "-oL"] + argv
        rp = Proc(argv, stdin=False)
        chunks, stamps = [], []

        def reader():
            fd = rp.proc.stdout.fileno()
            while True:
                data = os.read(fd, 65536)
                if not data:
                    return
                chunks.append(data)
                if b"sequence" in data:
                    stamps.append(time.monotonic())
        rt = threading.Thread(target=reader, daemon=True)
        rt.start()
        time.sleep(0.5)   # its link attached (the router gives credit after that)
        cpu_im0 = im.cpu()
        t0 = time.monotonic()
        sp = Proc([send, im.host, str(im.port), address, str(count)], stdin=False)
        try:
            if sp.wait(TIMEOUT) is None or rp.wait(TIMEOUT) is None:
                raise BenchError("timed out")
            rt.join(10)
            cpu_im = _cpu_delta(cpu_im0, im.cpu())
            sent_out = sp.proc.stdout.read()
            if sp.proc.returncode or rp.proc.returncode:
                raise BenchError("exit status send %s receive %s%s%s" % (
                    sp.proc.returncode, rp.proc.returncode, sp.stderr_tail(),
                    rp.stderr_tail()))
            text = b"".join(chunks).decode("utf-8", "replace")
            seqs = [int(x) for x in re.findall(r'\{"sequence"=(\d+)\}', text)]
        finally:
            sp.kill()
            rp.kill()
        first, last = (stamps[0], stamps[-1]) if stamps else (None, None)
        got = set(seqs)
        expected = set(range(1, count + 1))
        row = dict(case="oneway", client="raw-c", mode=im.mode, settle="unsettled",
                   label=label, count=count, size=_raw_message_size(),
                   received=len(seqs), missing=len(expected - got),
                   duplicates=len(seqs) - len(got), unexpected=len(got - expected),
                   elapsed=(last or t0) - t0,
                   rate=_span_rate(len(got & expected), first, last),
                   rate_end_to_end=len(got & expected) / (last - t0) if last else None,
                   cpu_intermediary=cpu_im, cpu_sender=sp.rusage, cpu_receiver=rp.rusage,
                   acknowledged="%d messages sent and acknowledged" % count in sent_out)
        self._check_oneway(row)
        return row

    # -- an engine, one way -----------------------------------------------------
    def engine_oneway(self, im, engine, presettled, count):
        a = self.args
        settle = "presettled" if presettled else "unsettled"
        label = "fastamqp %s engine, %s (%s)" % (engine, settle, im.mode)
        address = "%s.%s.%s" % (ONEWAY_ADDRESS[im.mode], engine, settle)
        rp = Proc(worker_argv("recv", engine, im, address, count=count,
                              credit=a.credit), env=self.env)
        sp = None
        try:
            rp.read_event(30)   # ready
            sp = Proc(worker_argv("send", engine, im, address, count=count,
                                  threads=a.threads, presettled=presettled,
                                  size=a.size, budget=a.budget), env=self.env)
            sp.read_event(60)   # connected, link attached, payloads encoded
            cpu_im0 = im.cpu()
            dropped0 = im.dropped_presettled() if presettled else None
            sp.tell("go")
            sres = sp.read_event(TIMEOUT + 30)
            rp.tell("stop %d" % sres["sent"])
            rres = rp.read_event(TIMEOUT + 30)
            cpu_im = _cpu_delta(cpu_im0, im.cpu())
            dropped1 = im.dropped_presettled() if presettled else None
            sp.wait(10)
            rp.wait(10)
        finally:
            if sp is not None:
                sp.kill()
            rp.kill()
        outcomes = sres["outcomes"]
        sent = sres["sent"]
        end = rres["last"] or sres["t1"]
        elapsed = end - sres["t0"]
        row = dict(case="oneway", client=engine, mode=im.mode, settle=settle,
                   label=label, count=sent, requested=count, size=sres["size"],
                   threads=a.threads, received=rres["received"], missing=rres["missing"],
                   duplicates=rres["duplicates"], unexpected=rres["unexpected"],
                   undecodable=rres["undecodable"], outcomes=outcomes,
                   send_errors=sres["errors"], elapsed=elapsed,
                   rate=_span_rate(rres["unique"], rres["first"], rres["last"]),
                   rate_end_to_end=rres["unique"] / elapsed if elapsed > 0 else None,
                   send_rate=sent / (sres["t1"] - sres["t0"]),
                   cpu_intermediary=cpu_im, cpu_sender=sres["cpu"],
                   cpu_receiver=rres["cpu"],
                   acknowledged=outcomes.get("accepted", 0) == sent,
                   router_dropped_presettled=(dropped1 - dropped0) if None not in (
                       dropped0, dropped1) else None)
        self._check_oneway(row)
        return row

    def _check_oneway(self, row):
        problems = []
        # Pre-settled messages a router discarded on a congested consumer link, as
        # qdrouterd does (issue 14), and counted: reported with the row, not a failure.
        row["router_drop"] = bool(row["missing"]) and \
            row.get("router_dropped_presettled") == row["missing"]
        for k in ("missing", "duplicates", "unexpected", "undecodable"):
            if row.get(k) and not (k == "missing" and row["router_drop"]):
                problems.append("%d %s" % (row[k], k))
        if not row["acknowledged"]:
            problems.append("not every send accepted: %s %s" % (
                row.get("outcomes", ""), row.get("send_errors", "")))
        row["ok"] = not problems
        if problems:
            self.fail(row["label"], ", ".join(problems))

    # -- an engine, request/response -------------------------------------------
    def engine_rpc(self, im, engine, calls):
        a = self.args
        address = "%s.%s" % (RPC_ADDRESS[im.mode], engine)
        server = Proc(worker_argv("rpc-server", engine, im, address,
                                  threads=a.threads, credit=a.credit), env=self.env)
        client = None
        try:
            server.read_event(30)
            cpu_im0 = im.cpu()
            client = Proc(worker_argv("rpc-client", engine, im, address,
                                      calls=calls, threads=a.threads, size=a.size,
                                      budget=a.budget),
                          env=self.env)
            # Phase marks (one per concurrency level), then the results: the
            # intermediary's CPU seconds between marks are each level's.
            marks = []
            while True:
                cres = client.read_event(TIMEOUT * 2)
                marks.append(im.cpu())
                if cres["event"] == "done":
                    break
            cpu_im = _cpu_delta(cpu_im0, im.cpu())
            phase_cpu = [_cpu_delta(a, b) for a, b in zip(marks, marks[1:])]
            server.tell("stop")
            sres = server.read_event(30)
            client.wait(10)
            server.wait(10)
        finally:
            if client is not None:
                client.kill()
            server.kill()
        rows = []
        expected_served = sum(r["attempted"] for r in cres["results"]) + 5  # + warm-up
        problems = []
        for k in ("wrong_reply", "errors", "not_accepted"):
            if cres[k]:
                problems.append("%d %s %s" % (cres[k], k, cres["errors_text"]))
        if sres["duplicates"] or sres["errors"]:
            problems.append("server: %d duplicates, %d errors %s" % (
                sres["duplicates"], sres["errors"], sres["errors_text"]))
        if sres["served"] != expected_served:
            problems.append("server answered %d requests, expected %d" % (
                sres["served"], expected_served))
        for r, cpu_phase in zip(cres["results"], phase_cpu):
            if r["calls"] != r["attempted"]:
                problems.append("%d of %d calls completed at concurrency %d" % (
                    r["calls"], r["attempted"], r["concurrency"]))
            rows.append(dict(case="rpc", client=engine, mode=im.mode,
                             label="fastamqp %s engine, call (%s)" % (engine, im.mode),
                             concurrency=r["concurrency"], calls=r["calls"],
                             rate=r["rate"], p50_ms=r["p50_ms"], p99_ms=r["p99_ms"],
                             elapsed=r["elapsed"], cpu_client=r["cpu"],
                             cpu_intermediary=cpu_phase,
                             cpu_intermediary_total=cpu_im, ok=not problems))
        if problems:
            self.fail("fastamqp %s engine, call (%s)" % (engine, im.mode),
                      "; ".join(problems))
            for row in rows:
                row["ok"] = False
        return rows

    # -- the run -----------------------------------------------------------------
    def run(self):
        a = self.args
        engines, unavailable = available_engines(a.engines)
        raw = not a.no_raw and os.access(os.path.join(BENCH_BIN, "send"), os.X_OK) \
            and os.access(os.path.join(BENCH_BIN, "receive"), os.X_OK)
        from fastamqp import codec
        info = dict(python=sys.version.split()[0], codec=codec.IMPLEMENTATION,
                    fastamqp=_fastamqp_path(), engines=engines,
                    unavailable=unavailable, raw_proton_c=raw, count=a.count,
                    calls=a.calls, threads=a.threads, size=a.size, cpus=os.cpu_count(),
                    repeat=a.repeat, budget=a.budget, credit=a.credit,
                    started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        print("fastamqp engine benchmark: fastamqp from %s, codec %s, engines %s, %d CPUs"
              % (_fastamqp_path(), codec.IMPLEMENTATION, ", ".join(engines) or "none",
                 os.cpu_count()))
        for name, why in unavailable.items():
            print("  engine %s not available: %s" % (name, why))
        if not raw and not a.no_raw:
            print("  raw Proton C not built (run scripts/setup-bench): no baseline")
        modes = sorted(set(a.oneway_modes) | set(a.rpc_modes), key=["broker",
                                                                    "router"].index)
        counters = {}
        for mode in modes:
            im = start_intermediary(mode, profile=(a.profile_intermediary + "." + mode)
                                    if a.profile_intermediary else None,
                                    engine=a.intermediary,
                                    url=a.router_url if mode == "router" else a.broker_url)
            print("intermediary (%s)%s pid %s on %s, %s"
                  % (mode, " given," if im.external else "", im.pid or "unknown",
                     im.url, im.product()), flush=True)
            try:
                if mode in a.oneway_modes:
                    cases = []
                    if raw:
                        cases.append(("raw-c", None))
                    for engine in engines:
                        cases += [(engine, False), (engine, True)]
                    for client, presettled in cases:
                        runs = []
                        for _ in range(a.repeat):
                            try:
                                if client == "raw-c":
                                    row = self.raw_oneway(im, a.count)
                                else:
                                    row = self.engine_oneway(im, client, presettled,
                                                             a.count)
                            except (BenchError, KeyError, TypeError) as exc:
                                self.fail("one-way %s %s (%s)" % (
                                    client, "presettled" if presettled else "unsettled",
                                    mode), exc)
                                continue
                            runs.append(row)
                        if not runs:
                            continue
                        row = _best(runs)
                        self.rows.append(row)
                        print("  %-48s %8s msg/s%s%s" % (
                            row["label"], _n(row["rate"]),
                            "  (runs: %s)" % " ".join(_n(r["rate"]) for r in runs)
                            if len(runs) > 1 else "",
                            "" if row["ok"] else "  FAILED"), flush=True)
                if mode in a.rpc_modes:
                    for engine in engines:
                        runs = []
                        for _ in range(a.repeat):
                            try:
                                runs.append(self.engine_rpc(im, engine, a.calls))
                            except (BenchError, KeyError, TypeError) as exc:
                                self.fail("call %s (%s)" % (engine, mode), exc)
                        if not runs:
                            continue
                        # per concurrency level, the run with the most calls/s
                        rows = [_best(list(level)) for level in zip(*runs)]
                        self.rpc_rows += rows
                        for r in rows:
                            print("  %-48s %8s calls/s  p50 %s ms  p99 %s ms "
                                  "(concurrency %d)" % (
                                      r["label"], _n(r["rate"]), _n(r["p50_ms"], 2),
                                      _n(r["p99_ms"], 2), r["concurrency"]), flush=True)
            finally:
                counters[mode] = c = im.stop()
                # The intermediary's own books: nothing dropped but the pre-settled
                # messages the rows account for, nothing left behind.
                accounted = sum(r.get("router_dropped_presettled") or 0
                                for r in self.rows if r["mode"] == mode
                                and r.get("router_drop"))
                if im.external:
                    pass        # not ours: its books are its own
                elif c is None:
                    self.fail("intermediary (%s)" % mode, "no counters at exit"
                              + im.stderr_tail())
                elif c.get("dropped") != accounted or c.get("stored"):
                    self.fail("intermediary (%s)" % mode, "%s dropped (%d accounted "
                              "for), %s stored" % (c.get("dropped"), accounted,
                                                   c.get("stored")))
        self._ratios()
        self.print_table()
        result = dict(info=info, oneway=self.rows, rpc=self.rpc_rows,
                      intermediary_counters={m: _summary(c) for m, c in counters.items()},
                      failures=self.failures, ok=not self.failures)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=2, sort_keys=True)
            print("wrote %s" % a.json)
        if a.profile_intermediary:
            for mode in modes:
                print("intermediary profile (%s): %s.%s (top: %s.%s.txt)" % (
                    mode, a.profile_intermediary, mode, a.profile_intermediary, mode))
        if self.failures:
            print("\nFAILED:", file=sys.stderr)
            for f in self.failures:
                print("  " + f, file=sys.stderr)
            return 1
        return 0

    def _ratios(self):
        raw = {r["mode"]: r["rate"] for r in self.rows if r["client"] == "raw-c"}
        for r in self.rows:
            base = raw.get(r["mode"])
            r["ratio_to_raw_c"] = (r["rate"] / base) if base and r["rate"] else None

    def print_table(self):
        print()
        print("One-way throughput (messages/s delivered at the receiver)")
        hdr = "%-7s %-8s %-11s %6s %6s %8s %7s %6s %6s %6s %6s %5s %4s" % (
            "mode", "client", "sends", "bytes", "count", "msg/s", "vs raw",
            "im-cpu", "im-us", "tx-us", "rx-us", "lost", "dup")
        print(hdr)
        print("-" * len(hdr))
        for r in self.rows:
            el = r["elapsed"] or 1
            n = r["count"] or 1

            def us(x):
                return "%6.0f" % (x / n * 1e6) if x is not None else "     -"
            print("%-7s %-8s %-11s %6d %6d %8s %7s %6s %s %s %s %5d %4d%s" % (
                r["mode"], r["client"], r["settle"], r["size"], r["count"], _n(r["rate"]),
                "%.2fx" % r["ratio_to_raw_c"] if r.get("ratio_to_raw_c") else "-",
                "%.2f" % (r["cpu_intermediary"] / el)
                if r["cpu_intermediary"] is not None else "-",
                us(r["cpu_intermediary"]), us(r["cpu_sender"]), us(r["cpu_receiver"]),
                r["missing"], r["duplicates"], "  FAILED" if not r["ok"] else
                "  LOSS (router dropped pre-settled)" if r.get("router_drop") else ""))
        print("msg/s: at the receiver, first to last message. im-cpu: the intermediary's "
              "CPU seconds per second\n(1.00 = one core: the bound). im-us, tx-us, "
              "rx-us: CPU microseconds per message in the\nintermediary, the sending "
              "and the receiving process (raw C: whole process lifetimes).")
        if self.rpc_rows:
            print()
            print("Request/response (reply_address + expect_reply + send; server answers "
                  "with encode_reply)")
            hdr = "%-7s %-8s %11s %7s %9s %9s %9s %7s %7s %7s" % (
                "mode", "engine", "concurrency", "calls", "calls/s", "p50 ms", "p99 ms",
                "im-cpu", "im-us", "cl-us")
            print(hdr)
            print("-" * len(hdr))
            for r in self.rpc_rows:
                im_cpu = r["cpu_intermediary"]
                print("%-7s %-8s %11d %7d %9s %9s %9s %7s %7s %7.0f%s" % (
                    r["mode"], r["client"], r["concurrency"], r["calls"], _n(r["rate"]),
                    _n(r["p50_ms"], 2), _n(r["p99_ms"], 2),
                    _n(im_cpu / (r["elapsed"] or 1) if im_cpu is not None else None, 2),
                    _n(im_cpu / (r["calls"] or 1) * 1e6 if im_cpu is not None else None),
                    r["cpu_client"] / (r["calls"] or 1) * 1e6,
                    "" if r["ok"] else "  FAILED"))
            print("p50/p99: send to reply decoded, per call. im-cpu: the intermediary's "
                  "CPU seconds per second;\nim-us, cl-us: CPU microseconds per call in "
                  "the intermediary and in the calling process.")


_RAW_SIZE = None
_STDBUF = shutil.which("stdbuf")


def _best(runs):
    """The run with the highest rate (a noisy machine only ever slows a run down);
    ``ok`` only if every run was; the rates of all runs are kept."""
    best = dict(max(runs, key=lambda r: r["rate"] or -1.0))
    best["ok"] = all(r["ok"] for r in runs)
    best["runs"] = [r["rate"] for r in runs]
    return best


def _cpu_delta(before, after):
    """CPU seconds between two readings; None if the intermediary's CPU is unknown (an
    external one whose process /proc does not show us)."""
    return None if before is None or after is None else after - before


def _n(x, digits=0):
    return "-" if x is None else "%.*f" % (digits, x)


def _span_rate(n, first, last):
    """Messages/s at the receiver between its first and its last message."""
    if n < 2 or first is None or last is None or last <= first:
        return None
    return (n - 1) / (last - first)


def _raw_message_size():
    """The encoded size of the example's message: id ulong n, body {"sequence": n}."""
    global _RAW_SIZE
    if _RAW_SIZE is None:
        try:
            import proton
            m = proton.Message(id=proton.ulong(1000),
                               body={"sequence": proton.int32(1000)})
            _RAW_SIZE = len(m.encode())
        except Exception:  # noqa: BLE001 - informational only
            _RAW_SIZE = 0
    return _RAW_SIZE


def _summary(counters):
    if not counters:
        return None
    return {k: v for k, v in counters.items() if k != "addresses"}


def available_engines(wanted):
    """The engines that import, each checked in a child process (a crash is a 'no')."""
    ok, missing = [], {}
    for name in wanted:
        module, attr = ENGINES[name]
        code = "import importlib; getattr(importlib.import_module(%r), %r)" % (
            module, attr)
        try:
            p = subprocess.run([sys.executable, "-c", code], env=_child_env(),
                               capture_output=True, text=True, timeout=60,
                               cwd=tempfile.gettempdir())
        except subprocess.TimeoutExpired:
            missing[name] = "importing %s timed out" % module
            continue
        if p.returncode == 0:
            ok.append(name)
        else:
            lines = [x for x in p.stderr.strip().splitlines() if x.strip()]
            missing[name] = "import %s: %s" % (module, lines[-1] if lines else
                                                "exit status %d" % p.returncode)
    return ok, missing


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=5000,
                    help="one-way messages per case (default 5000)")
    ap.add_argument("--calls", type=int, default=1000,
                    help="request/response calls per concurrency level (default 1000)")
    ap.add_argument("--threads", type=int, default=8,
                    help="sender threads, RPC callers and server threads (default 8)")
    ap.add_argument("--size", type=int, default=1024,
                    help="encoded request size in bytes, about (default 1024)")
    ap.add_argument("--budget", type=float, default=10.0,
                    help="seconds of sending per case at most (default 10): a slow "
                         "engine sends fewer than --count/--calls")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each case N times and report the best (default 1)")
    ap.add_argument("--credit", type=int, default=500,
                    help="receiver link credit (default 500)")
    ap.add_argument("--engines", nargs="*", choices=sorted(ENGINES),
                    default=["c", "python"],
                    help="engines to measure, when they import (default: c python; "
                         "none: raw Proton C only)")
    ap.add_argument("--oneway-modes", nargs="*", choices=("broker", "router"),
                    default=["broker", "router"],
                    help="intermediary modes for one-way throughput (default: both)")
    ap.add_argument("--rpc-modes", nargs="*", choices=("broker", "router"),
                    default=["broker", "router"],
                    help="intermediary modes for request/response (default: both)")
    ap.add_argument("--no-raw", action="store_true",
                    help="skip the raw Proton C baseline")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--profile-intermediary", metavar="FILE",
                    help="profile the intermediary with yappi into FILE.<mode>")
    ap.add_argument("--intermediary", choices=("python", "c"), default="python",
                    help="the intermediary's implementation: python (default) or c "
                         "(the C relay, docs/relay.md)")
    ap.add_argument("--router-url", metavar="URL",
                    help="an intermediary this script does not start for the router "
                         "cases (e.g. a qdrouterd), instead of the embedded router")
    ap.add_argument("--broker-url", metavar="URL",
                    help="one for the broker cases (e.g. a qpidd or RabbitMQ)")
    # worker mode (internal)
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--address", help=argparse.SUPPRESS)
    ap.add_argument("--presettled", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=TIMEOUT, help=argparse.SUPPRESS)
    ap.add_argument("--grace", type=float, default=0.3, help=argparse.SUPPRESS)
    ap.add_argument("--idle", type=float, default=3.0, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        import warnings
        warnings.simplefilter("ignore", RuntimeWarning)
        WORKERS[args.worker](args)
        return 0
    import warnings
    warnings.simplefilter("ignore", RuntimeWarning)   # "no C extension": we report it
    if min(args.count, args.calls, args.threads, args.repeat) < 1:
        raise SystemExit("--count, --calls, --threads and --repeat must be at least 1")
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
