#!/usr/bin/env python3
"""End-to-end oslo.messaging benchmark: fastamqp against the original AMQP 1.0 driver.

    .venv/bin/python benchmarks/e2e.py [--quick] [--json out.json] [--only c,python,...]

Drives oslo.messaging RPC and notifications end to end (RPC servers, notification
listener, RPC clients and notifiers, each in its own process) for several drivers in
ONE run, through the same intermediaries, with a 1 KiB payload, and prints rates,
ratios against the original driver and the issue's targets next to them.

Drivers (``--only`` takes a comma-separated subset of these names):

* ``c``       fastamqp, C engine (oslo.messaging 18.x, this tree on PYTHONPATH)
* ``python``  fastamqp, pure-Python engine (same, FASTAMQP_PUREPYTHON=1)
* ``orig``    the original driver: oslo.messaging 14.9.3 + pyngus, in .venv-orig
              (scripts/setup-env-original makes it; it registers ``amqp://`` itself)
* ``rabbit``  oslo.messaging 18.x's rabbit driver (``rabbit://``, AMQP 0-9-1) against a
              private RabbitMQ node (tests/support/rabbit.py) on free ports
* ``c-rabbit`` fastamqp C engine over that RabbitMQ's AMQP 1.0 plugin (3.x), or its
              native AMQP 1.0 with ``--rabbitmq 4`` (a 4.x node from the Debian 13
              chroot of scripts/rabbitmq4-chroot; both drivers on that one node)

The amqp drivers (c, python, orig) all use the embedded intermediary, each mode in its
own process (``python -m fastamqp.intermediary``): the router (qdrouterd emulation) for
RPC and the broker (qpidd emulation) for notifications. ``--router-url URL`` and
``--broker-url URL`` use an intermediary this script did not start instead (a real
qdrouterd, qpidd or RabbitMQ; benchmarks/peers.py): its CPU is read from /proc when it
listens on this machine.

Next to the call rows, the floor (unless ``--no-floor``): raw Proton C request/response
(benchmarks/csrc/rr_floor.c, compiled on first use; benchmarks/rr_floor.py), one 1 KiB
request at a time through the same router, and once with no intermediary at all: what
the router itself costs a call.

Workloads, each run for every driver in turn before the next workload (interleaved, so
that a noisy machine hits them alike; ``--repeat`` rounds keep the best):

* ``call1``   RPC call, 1 client thread: calls/s, latency p50/p99
* ``call10``  RPC call, 10 client threads sharing one transport
* ``cast10``  RPC cast, 10 client threads: delivered/s at the server
* ``fanout``  RPC fanout cast, 10 client threads, 2 servers (each in its own process):
              deliveries/s summed over both servers
* ``notify``  notifications (messagingv2, info), 10 client threads, through the broker:
              delivered/s at the listener

Every message carries a per-phase id: servers and listeners count unique ids and
duplicates. Any loss, duplicate, failed send or wrong reply fails the run (exit status
1, FAILED in the table) -- except for the original driver, whose loss of pre-settled
casts through a router is known (REFERENCE): it is reported, marked ``LOSS``, and does
not fail the run; and except for a loss the router itself accounts for: pre-settled
messages it discarded on a congested consumer link, as qdrouterd does (issue 14,
docs/reliability.md), when its count of them over the phase equals the loss (marked
``LOSS (router dropped pre-settled)``) (``FASTAMQP_E2E_INJECT=lose:N,dup:M`` in the environment makes every
receiver forget every N-th message and count every M-th twice: proof that the checks
work). CPU time per message is getrusage() of each child (its own
measurement, deltas around each phase) and /proc for the intermediaries and RabbitMQ.
"""
import argparse
import datetime
import importlib.util
import json
import os
import platform
import queue
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
import rr_floor  # noqa: E402

WORKER = os.path.join(HERE, "e2e_worker.py")
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")
ORIG_PY = os.path.join(ROOT, ".venv-orig", "bin", "python")

DRIVERS = ("c", "c-ps", "python", "orig", "rabbit", "c-rabbit")
LABELS = {"c": "fastamqp C", "c-ps": "fastamqp C, pre-settled",
          "python": "fastamqp pure-Py", "orig": "original 14.9.3",
          "rabbit": "rabbit:// 0-9-1", "c-rabbit": "fastamqp C/RabbitMQ",
          "floor": "raw Proton C floor", "floor-direct": "raw C, no router"}
FLOORS = ("floor", "floor-direct")
WORKLOADS = ("call1", "call10", "cast10", "fanout", "notify")
WL_LABELS = {"call1": "call, 1 client", "call10": "call, 10 clients",
             "cast10": "cast, 10 clients", "fanout": "fanout, 10 cl. -> 2 srv",
             "notify": "notify, 10 cl. (broker)"}
BASELINE = "orig"
# The targets, against the original driver (ratio of rates; p50 ratio; µs).
TARGETS = [
    ("call1", "rate", 4.0, "call 1 client: calls/s >= 4x"),
    ("call1", "p50", 0.25, "call 1 client: p50 <= 0.25x"),
    ("call10", "rate", 4.0, "call 10 clients: calls/s >= 4x"),
    ("cast10", "rate", 3.0, "cast 10 clients: delivered/s >= 3x, zero lost"),
    ("notify", "rate", 3.0, "notify via broker: delivered/s >= 3x"),
]
CPU_TARGET_US = 10.0


class BenchError(RuntimeError):
    pass


def _die_with_parent():
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        pass


def _session_cpu(sid):
    """CPU seconds of every live process of session ``sid`` (a RabbitMQ node)."""
    total = 0.0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    return total


# ------------------------------------------------------------------------------------
# Child processes
# ------------------------------------------------------------------------------------

class Worker:
    """An e2e_worker.py child: JSON commands in, one JSON answer per command out."""

    def __init__(self, name, python, env, args):
        self.name = name
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [python, WORKER] + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr, env=env, text=True, cwd=tempfile.gettempdir(),
            preexec_fn=_die_with_parent)
        self.pid = self.proc.pid
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def stderr_tail(self, n=2000):
        try:
            self.stderr.seek(0)
            text = self.stderr.read().strip()
        except (OSError, ValueError):
            return ""
        return ("\n--- stderr of %s ---\n%s" % (self.name, text[-n:])) if text else ""

    def answer(self, timeout):
        try:
            msg = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError("%s: no answer within %.0f s%s"
                             % (self.name, timeout, self.stderr_tail())) from None
        if msg is None:
            self.proc.wait(5)
            raise BenchError("%s exited (status %s)%s"
                             % (self.name, self.proc.returncode, self.stderr_tail()))
        if not msg.get("ok"):
            raise BenchError("%s: %s%s" % (self.name, msg.get("error"),
                                           self.stderr_tail()))
        return msg

    def ask(self, cmd, timeout=30):
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise BenchError("%s: %s%s" % (self.name, e, self.stderr_tail())) from None
        return self.answer(timeout)

    def cpu(self):
        return self.ask({"cmd": "cpu"})["cpu"]

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_intermediary(mode, env, engine):
    """The embedded intermediary in its own process (benchmarks/peers.py)."""
    try:
        return peers.Embedded(mode, engine=engine, python=VENV_PY, env=env,
                              preexec_fn=_die_with_parent)
    except peers.PeerError as e:
        raise BenchError(str(e)) from None


class Rabbit:
    """A private RabbitMQ node, via tests/support/rabbit.py (not modified, imported by
    path)."""

    def __init__(self, generation=3):
        spec = importlib.util.spec_from_file_location(
            "fastamqp_e2e_rabbit", os.path.join(ROOT, "tests", "support", "rabbit.py"))
        self.mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.mod)
        why = self.mod.installed() if generation < 4 else self.mod.chroot4_missing()
        if why:
            raise BenchError(why)
        self.generation = generation
        self.dir = tempfile.mkdtemp(prefix="fastamqp-e2e-rabbit-")
        self.node = self.mod.RabbitNode(
            self.dir, root=self.mod.CHROOT4 if generation >= 4 else None)

    def start(self):
        self.node.start()
        if self.generation < 4:
            # 3.x: reply and fanout queues of AMQP 1.0 clients need an expiry
            # (docs/rabbitmq.md); on 4.x fastamqp declares them with one.
            self.node.ctl("set_policy", "--apply-to", "queues", "fastamqp-transient",
                          r"^(fastamqp-reply\.|amq\.gen-)", '{"expires": 60000}')
        self.version = self.node.ctl("version").strip()
        return self

    def cpu(self):
        return _session_cpu(self.node.process.pid)

    def amqp_url(self):
        return self.node.url()

    def rabbit_url(self):
        return "rabbit://guest:guest@127.0.0.1:%d/" % self.node.port

    def stop(self):
        import shutil
        try:
            self.node.remove()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------------------------
# One driver: its processes
# ------------------------------------------------------------------------------------

def _env_fastamqp(pure):
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTAMQP_PUREPYTHON", "PYTHONPATH")}
    env["PYTHONPATH"] = ROOT                  # this tree, with its built .so files
    if pure:
        env["FASTAMQP_PUREPYTHON"] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _c_engine_missing():
    """Why the c and c-rabbit drivers would not run the C engine, or None. They import
    this tree (PYTHONPATH), which falls back to the pure-Python engine, with a warning
    nobody sees, when its extension modules are not built in place."""
    out = subprocess.run(
        [VENV_PY, "-c", "from fastamqp import engine; print(engine.engine_name(), "
         "engine.c_connection is not None)"],
        env=_env_fastamqp(pure=False), cwd="/", capture_output=True, text=True)
    if out.returncode == 0 and out.stdout.split() == ["c", "True"]:
        return None
    return ("the C engine is not built in this tree (%s/fastamqp/*.so): the c and "
            "c-rabbit drivers would run the pure-Python engine. Build it in place, or "
            "copy the .so files of .venv's installation (pip install . builds them) "
            "into fastamqp/ and fastamqp/intermediary/" % ROOT)


def _env_orig():
    # Nothing of this tree: fastamqp.egg-info on the path would register a second amqp.
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTAMQP_PUREPYTHON", "PYTHONPATH")}
    env["PYTHONWARNINGS"] = "ignore"
    return env


class Driver:
    def __init__(self, name, python, env, rpc_url, notify_url, rpc_peer, notify_peer,
                 timeout, fanout_url=None, fanout_peer=None):
        self.name = name
        self.python, self.env = python, env
        self.rpc_url, self.notify_url = rpc_url, notify_url
        self.rpc_peer, self.notify_peer = rpc_peer, notify_peer   # peers.* or Rabbit
        self.timeout = timeout
        self.fanout_url = fanout_url or rpc_url
        self.fanout_peer = fanout_peer or rpc_peer
        self.s1 = self.s2 = self.client = None
        self.info = {}

    def start(self):
        common = ["--rpc-url", self.rpc_url, "--notify-url", self.notify_url,
                  "--fanout-url", self.fanout_url,
                  "--prefix", "e2e_%s_" % self.name.replace("-", "_")]
        self.s1 = Worker("%s server s1" % self.name, self.python, self.env,
                         ["server"] + common + ["--topics", "bench,bench_fan",
                                                "--name", "s1", "--listen"])
        self.s2 = Worker("%s server s2" % self.name, self.python, self.env,
                         ["server"] + common + ["--topics", "bench_fan",
                                                "--name", "s2"])
        self.client = Worker("%s client" % self.name, self.python, self.env,
                             ["client"] + common + ["--timeout", str(self.timeout)])

    def wait_ready(self):
        for w in (self.s1, self.s2, self.client):
            w.answer(90)

    def collect_info(self):
        self.info = {"client": self.client.ask({"cmd": "info"}),
                     "server": self.s1.ask({"cmd": "info"})}
        for v in self.info.values():
            v.pop("ok", None)

    def stop(self):
        for w in (self.client, self.s1, self.s2):
            if w is not None:
                try:
                    w.stop()
                except Exception:  # noqa: BLE001 - stop them all
                    pass


# ------------------------------------------------------------------------------------
# Phases
# ------------------------------------------------------------------------------------

def run_phase(drv, wl, rnd, a):
    phase = "%s-r%d" % (wl, rnd)
    servers = [drv.s1, drv.s2] if wl == "fanout" else [drv.s1]
    peer = {"notify": drv.notify_peer, "fanout": drv.fanout_peer}.get(wl, drv.rpc_peer)
    threads = 1 if wl == "call1" else a.threads
    if wl.startswith("call"):
        cmd = {"cmd": "call", "threads": threads, "count": a.max_calls}
    elif wl == "notify":
        cmd = {"cmd": "notify", "threads": threads, "count": a.max_messages}
    else:
        cmd = {"cmd": "cast", "threads": threads, "count": a.max_messages,
               "fanout": wl == "fanout", "topic": "bench_fan" if wl == "fanout"
               else "bench"}
    cmd.update(phase=phase, duration=a.duration, warmup=a.warmup)

    spies = {}
    if a.profile and drv.name in a.profile_drivers:
        import e2e_profile
        targets = {"client": drv.client.pid, "server": drv.s1.pid}
        if wl == "fanout":
            targets["server2"] = drv.s2.pid
        if isinstance(peer, peers.Embedded):
            targets["intermediary"] = peer.pid
        for role, pid in targets.items():
            out = os.path.join(a.profile, "%s-%s-r%d-%s.raw" % (drv.name, wl, rnd, role))
            spies[role] = (out, e2e_profile.start(pid, out))
    cpu0 = {"client": drv.client.cpu(), "servers": sum(s.cpu() for s in servers),
            "peer": peer.cpu()}
    dropped0 = _dropped_presettled(peer)
    try:
        res = drv.client.ask(cmd, timeout=a.duration + 2 * a.timeout + 30)
        sent = res["sent"]
        got = [s.ask({"cmd": "collect", "phase": phase, "expected": sent,
                      "grace": a.grace, "deadline": a.timeout + 30},
                     timeout=a.timeout + 60) for s in servers]
    finally:
        for out, spy in spies.values():
            e2e_profile.stop(spy)
    # Warm-up messages are recorded under their own phase: drop them.
    for s in servers:
        s.ask({"cmd": "forget", "phase": "warm-" + phase})
    cpu1 = {"client": drv.client.cpu(), "servers": sum(s.cpu() for s in servers),
            "peer": peer.cpu()}
    dropped1 = _dropped_presettled(peer)
    router_dropped = (dropped1 - dropped0) if None not in (dropped0, dropped1) else None

    delivered = sum(g["in_range"] for g in got)
    expected = sent * len(servers)
    lost = expected - delivered
    dups = sum(g["dups"] for g in got)
    unexpected = sum(g["unexpected"] for g in got)
    row = {"driver": drv.name, "workload": wl, "round": rnd, "threads": threads,
           "sent": sent, "failed_sends": res["failed"], "send_errors": res["errors"],
           "delivered": delivered, "expected": expected, "lost": lost,
           "duplicates": dups, "unexpected": unexpected,
           "send_elapsed": res["t_end"] - res["t_start"],
           "router_dropped_presettled": router_dropped}
    if wl.startswith("call"):
        el = res["t_end"] - res["t_start"]
        row.update(rate=res["calls"] / el if el > 0 else 0.0, calls=res["calls"],
                   wrong_replies=res["wrong_replies"], p50_ms=res["p50_ms"],
                   p99_ms=res["p99_ms"], mean_ms=res["mean_ms"], elapsed=el)
        messages = res["calls"]
    else:
        lasts = [g["last"] for g in got if g["last"] is not None]
        el = (max(lasts) - res["t_start"]) if lasts else None
        row.update(rate=delivered / el if el else 0.0, elapsed=el,
                   send_rate=sent / row["send_elapsed"] if row["send_elapsed"] else 0.0)
        messages = sent
    d = {k: (cpu1[k] - cpu0[k]) if cpu1[k] is not None and cpu0[k] is not None
         else None for k in cpu0}
    row["cpu_s"] = d
    row["cpu_us_per_msg"] = {
        "client": d["client"] / messages * 1e6 if messages else None,
        # per delivery: each server's CPU over what it received
        "server": d["servers"] / delivered * 1e6 if delivered else None,
        "intermediary": (d["peer"] / messages * 1e6
                         if messages and d["peer"] is not None else None)}

    problems = []
    if res["failed"]:
        problems.append("%d sends/calls failed (%s)" % (res["failed"],
                                                        "; ".join(res["errors"][:2])))
    # The router's own count of pre-settled messages it discarded (qdrouterd's rule on a
    # congested consumer link, issue 14) explains a loss only if it is exactly the loss.
    row["router_drop"] = lost > 0 and router_dropped == lost
    if row["router_drop"]:
        problems.append("%d of %d lost: pre-settled, dropped by the router" % (lost,
                                                                              expected))
    elif lost > 0:
        problems.append("%d of %d lost" % (lost, expected))
    if dups:
        problems.append("%d duplicates" % dups)
    if unexpected:
        problems.append("%d unexpected ids" % unexpected)
    if row.get("wrong_replies"):
        problems.append("%d wrong replies" % row["wrong_replies"])
    if sent == 0:
        problems.append("nothing sent")
    if spies:
        row["profile"] = {role: dict(e2e_profile.summarize(out), file=out)
                          for role, (out, _) in spies.items()}
    row["problems"] = problems
    # The original driver's loss is known (REFERENCE), and so is a router's discarding
    # of pre-settled messages it counted: reported, not a failure.
    row["tolerated"] = bool(problems) and (drv.name == BASELINE or (
        row["router_drop"] and len(problems) == 1))
    row["ok"] = not problems
    return row


def _dropped_presettled(peer):
    """The peer's count of pre-settled deliveries it discarded, or None."""
    counter = getattr(peer, "dropped_presettled", None)
    return counter() if counter is not None else None


def run_floor(name, url, peer, rnd, a):
    """A row for the raw Proton C request/response floor (benchmarks/rr_floor.py)
    through ``url`` (None: no intermediary), shaped like the call rows."""
    cpu0 = peer.cpu() if peer is not None else None
    try:
        r = rr_floor.measure(url, count=a.floor_count, exe=a.floor_exe)
    except RuntimeError as e:
        raise BenchError("%s: %s" % (name, e)) from None
    cpu1 = peer.cpu() if peer is not None else None
    n = r["count"]
    el = n / r["rate"] if r["rate"] else None
    mid = (cpu1 - cpu0) if None not in (cpu0, cpu1) else None
    return {"driver": name, "workload": "call1", "round": rnd, "threads": 1, "sent": n,
            "failed_sends": 0, "send_errors": [], "delivered": n, "expected": n,
            "lost": 0, "duplicates": 0, "unexpected": 0, "send_elapsed": el,
            "rate": r["rate"], "calls": n, "wrong_replies": 0,
            "p50_ms": r["p50_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
            "mean_ms": r["mean_us"] / 1000, "elapsed": el,
            "cpu_s": {"client": r["cpu_client_s"], "servers": r["cpu_server_s"],
                      "peer": mid},
            "cpu_us_per_msg": {
                "client": r["cpu_client_s"] / n * 1e6,
                "server": (r["cpu_server_s"] / n * 1e6
                           if r["cpu_server_s"] is not None else None),
                "intermediary": mid / n * 1e6 if mid is not None else None},
            "floor": r, "problems": [], "tolerated": False, "ok": True}


# ------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------

def _best(rows):
    """Per (driver, workload): the run with the highest rate, plus every run's rate and
    whether any run had problems."""
    out = {}
    for r in rows:
        key = (r["driver"], r["workload"])
        b = out.get(key)
        if b is None or r["rate"] > b["rate"]:
            keep = dict(r)
            keep["all_rates"] = (b or {}).get("all_rates", []) + [r["rate"]]
            keep["any_problem"] = (b or {}).get("any_problem", False) or not r["ok"]
            keep["any_failure"] = (b or {}).get("any_failure", False) or (
                not r["ok"] and not r["tolerated"])
            keep["all_problems"] = (b or {}).get("all_problems", []) + r["problems"]
            out[key] = keep
        else:
            b["all_rates"].append(r["rate"])
            b["any_problem"] = b["any_problem"] or not r["ok"]
            b["any_failure"] = b["any_failure"] or (not r["ok"] and not r["tolerated"])
            b["all_problems"] += r["problems"]
    return out


def _fmt(x, digits=0):
    if x is None:
        return "-"
    return "{:,.{}f}".format(x, digits)


def ratios(best, drivers):
    """{workload: {driver: {"rate": x, "p50": y}}} against the baseline."""
    out = {}
    for wl in WORKLOADS:
        base = best.get((BASELINE, wl))
        for d in drivers:
            r = best.get((d, wl))
            if r is None or base is None or not base["rate"]:
                continue
            v = {"rate": r["rate"] / base["rate"]}
            if r.get("p50_ms") and base.get("p50_ms"):
                v["p50"] = r["p50_ms"] / base["p50_ms"]
            out.setdefault(wl, {})[d] = v
    return out


def print_tables(best, drivers, rat):
    print()
    head = ("%-24s %-20s %10s %6s %8s %8s %12s %5s %7s %7s %7s"
            % ("workload", "driver", "rate/s", "x orig", "p50 ms", "p99 ms",
               "delivered", "dups", "cli us", "srv us", "mid us"))
    print(head)
    print("-" * len(head))
    for wl in WORKLOADS:
        for d in drivers:
            r = best.get((d, wl))
            if r is None:
                continue
            x = rat.get(wl, {}).get(d, {}).get("rate")
            mark = ""
            if r["any_failure"]:
                mark = "  FAILED"
            elif r["any_problem"]:
                mark = ("  LOSS (known, reported)" if d == BASELINE
                        else "  LOSS (router dropped pre-settled)")
            cpu = r["cpu_us_per_msg"]
            print("%-24s %-20s %10s %6s %8s %8s %12s %5d %7s %7s %7s%s" % (
                WL_LABELS[wl], LABELS[d], _fmt(r["rate"]),
                _fmt(x, 2) if x is not None else "-",
                _fmt(r.get("p50_ms"), 2), _fmt(r.get("p99_ms"), 2),
                "%d/%d" % (r["delivered"], r["expected"]), r["duplicates"],
                _fmt(cpu["client"]), _fmt(cpu["server"]), _fmt(cpu["intermediary"]),
                mark))
        print()
    print("rate: calls/s (call rows) or deliveries/s counted at the receivers, from the "
          "first send to the last\ndelivery (fanout: summed over both servers). x orig: "
          "rate / the original driver's rate in this run.\ncli/srv/mid us: CPU "
          "microseconds per message of the client process, the server process(es) (per\n"
          "delivery) and the intermediary or RabbitMQ (per message sent; a call is a "
          "request and a reply).\nraw Proton C floor: benchmarks/csrc/rr_floor.c, one "
          "request at a time through the same router\n(no router: client to server "
          "directly); its srv us is the echo server's.")


def target_table(best, drivers, rat):
    rows = []
    cand = [d for d in drivers if d in ("c", "python", "c-rabbit")]   # fastamqp
    for wl, kind, want, text in TARGETS:
        entry = {"target": text, "workload": wl, "kind": kind, "want": want}
        for d in cand:
            v = rat.get(wl, {}).get(d, {}).get(kind)
            r = best.get((d, wl))
            if v is None:
                entry[d] = None
                continue
            met = v >= want if kind == "rate" else v <= want
            if wl == "cast10" and r is not None and (r["lost"] or r["any_problem"]):
                met = False
            entry[d] = {"ratio": v, "met": met}
        rows.append(entry)
    for side in ("client", "server"):
        entry = {"target": "CPU per message, %s side <= %.0f us" % (side, CPU_TARGET_US),
                 "kind": "cpu", "side": side, "want": CPU_TARGET_US}
        for d in cand:
            vals = [best[(d, wl)]["cpu_us_per_msg"][side] for wl in WORKLOADS
                    if (d, wl) in best and best[(d, wl)]["cpu_us_per_msg"][side]]
            entry[d] = ({"worst_us": max(vals), "best_us": min(vals),
                         "met": max(vals) <= CPU_TARGET_US} if vals else None)
        rows.append(entry)
    return rows, cand


def print_targets(rows, cand):
    print("\nTargets (fastamqp against the original driver, this run):")
    print("%-48s" % "target" + "".join("%20s" % LABELS[d] for d in cand))
    for e in rows:
        cells = []
        for d in cand:
            v = e.get(d)
            if v is None:
                cells.append("%20s" % "-")
            elif e["kind"] == "cpu":
                cells.append("%20s" % ("%.0f-%.0f us %s" % (v["best_us"], v["worst_us"],
                                                            "MET" if v["met"] else "no")))
            else:
                cells.append("%20s" % ("%.2fx %s" % (v["ratio"],
                                                     "MET" if v["met"] else "no")))
        print("%-48s" % e["target"] + "".join(cells))


# ------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="short phases, one round (< 60 s with --only c,python)")
    ap.add_argument("--only", default=",".join(DRIVERS),
                    help="drivers, comma-separated, of %s (default all)"
                         % ", ".join(DRIVERS))
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help="comma-separated, of %s" % ", ".join(WORKLOADS))
    ap.add_argument("--json", metavar="FILE", help="write every figure here")
    ap.add_argument("--duration", type=float, help="seconds of sending per phase "
                    "(default 3, --quick 0.7)")
    ap.add_argument("--repeat", type=int, help="interleaved rounds, best kept "
                    "(default 2, --quick 1)")
    ap.add_argument("--threads", type=int, default=10)
    ap.add_argument("--rabbitmq", type=int, choices=(3, 4), default=3,
                    help="the RabbitMQ of the rabbit and c-rabbit drivers: 3 the "
                         "system's (Debian 12: 3.10, AMQP 1.0 plugin), 4 the Debian 13 "
                         "chroot's (4.0.5, native AMQP 1.0)")
    ap.add_argument("--fanout-via", choices=("broker", "router"), default="broker",
                    help="intermediary for the amqp drivers' fanout (default broker, "
                         "as the earlier published runs)")
    ap.add_argument("--intermediary", choices=("python", "c"), default="python",
                    help="the embedded intermediary's implementation: python (the full "
                         "one, default) or c (the C relay, docs/relay.md)")
    ap.add_argument("--router-url", metavar="URL",
                    help="an intermediary this script does not start for RPC (e.g. a "
                         "qdrouterd), instead of the embedded router")
    ap.add_argument("--broker-url", metavar="URL",
                    help="one for notifications (and fanout via broker), instead of the "
                         "embedded broker (e.g. a qpidd, or the router's URL again)")
    ap.add_argument("--no-floor", dest="floor", action="store_false",
                    help="leave out the raw Proton C request/response floor")
    ap.add_argument("--floor-count", type=int,
                    help="round trips per floor measurement (default 3000, --quick 300)")
    ap.add_argument("--max-messages", type=int,
                    help="cap on casts/notifications per phase (default 20000, "
                         "--quick 3000)")
    ap.add_argument("--max-calls", type=int, default=1000000)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--grace", type=float, help="seconds without a new delivery "
                    "before a receiver gives up waiting (default 3, --quick 1.5)")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="RPC call timeout (s)")
    ap.add_argument("--profile", metavar="DIR",
                    help="sample the processes of --profile-drivers with py-spy during "
                         "each phase (DIR/<driver>-<workload>-r<round>-<role>.raw) and "
                         "print where their time goes; slows them down a little")
    ap.add_argument("--profile-drivers", default="c",
                    help="drivers to profile with --profile (default c)")
    a = ap.parse_args(argv)
    a.profile_drivers = [d.strip() for d in a.profile_drivers.split(",")]
    q = a.quick
    a.duration = a.duration or (0.7 if q else 3.0)
    a.repeat = a.repeat or (1 if q else 2)
    a.max_messages = a.max_messages or (3000 if q else 20000)
    a.grace = a.grace or (1.5 if q else 3.0)
    a.floor_count = a.floor_count or (300 if q else 3000)
    a.floor_exe = None
    a.drivers = [d.strip() for d in a.only.split(",") if d.strip()]
    a.workloads = [w.strip() for w in a.workloads.split(",") if w.strip()]
    for d in a.drivers:
        if d not in DRIVERS:
            ap.error("unknown driver %r (of %s)" % (d, ", ".join(DRIVERS)))
    for w in a.workloads:
        if w not in WORKLOADS:
            ap.error("unknown workload %r (of %s)" % (w, ", ".join(WORKLOADS)))
    return a


def report(row, rnd, wl, name, rows, failures):
    rows.append(row)
    status = "ok" if row["ok"] else ("; ".join(row["problems"]) + (
        " (known, reported)" if row["tolerated"] else " FAILED"))
    extra = (" p50 %.2f ms p99 %.2f ms" % (row["p50_ms"], row["p99_ms"])
             if row.get("p50_ms") is not None else "")
    print("  r%d %-7s %-12s %9.0f/s%s  %s" % (rnd, wl, name, row["rate"], extra, status),
          flush=True)
    if not row["ok"] and not row["tolerated"]:
        failures.append("%s/%s: %s" % (name, wl, "; ".join(row["problems"])))


def _git_head():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        return None


def main(argv=None):
    a = parse_args(argv)
    started = time.monotonic()
    conditions = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "host": platform.node(), "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(), "kernel": platform.release(),
        "python": sys.version.split()[0], "fastamqp_git_head": _git_head(),
        "payload_bytes": 1024, "duration_s": a.duration, "repeat": a.repeat,
        "threads": a.threads, "max_messages": a.max_messages, "grace_s": a.grace,
        "quick": a.quick, "fanout_via": a.fanout_via, "intermediary": a.intermediary,
        "router_url": a.router_url, "broker_url": a.broker_url,
        "drivers": a.drivers, "workloads": a.workloads}
    if a.profile:
        sys.path.insert(0, HERE)
        import e2e_profile
        if e2e_profile.py_spy() is None:
            print("e2e: --profile needs py-spy ($PY_SPY, PATH or /tmp/pyspy/bin/py-spy)",
                  file=sys.stderr)
            return 2
        os.makedirs(a.profile, exist_ok=True)
    if any(d in a.drivers for d in ("c", "c-rabbit")):
        why = _c_engine_missing()
        if why:
            print("e2e: %s" % why, file=sys.stderr)
            return 2
    if "orig" in a.drivers and not os.access(ORIG_PY, os.X_OK):
        print("e2e: %s missing: running scripts/setup-env-original" % ORIG_PY,
              flush=True)
        subprocess.run([os.path.join(ROOT, "scripts", "setup-env-original")],
                       check=True, cwd=ROOT)

    router = broker = rabbit = None
    drivers = []
    rows, failures = [], []
    try:
        ienv = _env_fastamqp(pure=False)
        if any(d in a.drivers for d in ("c", "c-ps", "python", "orig")):
            router = (peers.External("router", a.router_url) if a.router_url
                      else start_intermediary("router", ienv, a.intermediary))
            broker = (peers.External("broker", a.broker_url) if a.broker_url
                      else start_intermediary("broker", ienv, a.intermediary))
            for im in (router, broker):
                product = im.product()
                conditions["%s_product" % im.mode] = product
                print("e2e: %s %s%s, %s, pid %s" % (
                    im.mode, "given " if im.external else "", im.url, product,
                    im.pid or "unknown (CPU not measured)"), flush=True)
            if a.floor and "call1" in a.workloads:
                try:
                    a.floor_exe = rr_floor.build()
                except rr_floor.FloorUnavailable as e:
                    print("e2e: no floor: %s" % e, flush=True)
                    conditions["floor_unavailable"] = str(e)
        if any(d in a.drivers for d in ("rabbit", "c-rabbit")):
            rabbit = Rabbit(a.rabbitmq)
            t = time.monotonic()
            rabbit.start()
            print("e2e: RabbitMQ %s on 127.0.0.1:%d (started in %.1f s)"
                  % (rabbit.version, rabbit.node.port, time.monotonic() - t), flush=True)
            conditions["rabbitmq"] = rabbit.version
        for d in a.drivers:
            fan = router if a.fanout_via == "router" else broker
            if d in ("c", "c-ps", "python"):
                env = _env_fastamqp(d == "python")
                if d == "c-ps":
                    # Casts and notifications pre-settled, as the original sent casts:
                    # what the confirmed default is compared with.
                    env["FASTAMQP_E2E_PRE_SETTLED"] = "rpc-cast,rpc-reply,notify"
                drv = Driver(d, VENV_PY, env, router.url,
                             broker.url, router, broker, a.timeout, fan.url, fan)
            elif d == "orig":
                drv = Driver(d, ORIG_PY, _env_orig(), router.url, broker.url, router,
                             broker, a.timeout, fan.url, fan)
            elif d == "rabbit":
                drv = Driver(d, VENV_PY, _env_fastamqp(False), rabbit.rabbit_url(),
                             rabbit.rabbit_url(), rabbit, rabbit, a.timeout)
            else:
                drv = Driver(d, VENV_PY, _env_fastamqp(False), rabbit.amqp_url(),
                             rabbit.amqp_url(), rabbit, rabbit, a.timeout)
            drv.start()
            drivers.append(drv)
        for drv in drivers:
            drv.wait_ready()
        print("e2e: %d driver(s) ready (%.1f s): %s" % (
            len(drivers), time.monotonic() - started,
            ", ".join(d.name for d in drivers)), flush=True)

        for rnd in range(a.repeat):
            for wl in a.workloads:
                # Alternate the order between rounds: no driver always goes first.
                order = drivers if rnd % 2 == 0 else drivers[::-1]
                for drv in order:
                    try:
                        row = run_phase(drv, wl, rnd, a)
                    except BenchError as e:
                        row = {"driver": drv.name, "workload": wl, "round": rnd,
                               "error": str(e), "ok": False, "rate": 0.0,
                               "problems": ["error: " + str(e).splitlines()[0]],
                               "tolerated": False}
                        print("e2e: %s/%s round %d ERROR: %s" % (drv.name, wl, rnd, e),
                              file=sys.stderr, flush=True)
                        rows.append(row)
                        failures.append("%s/%s: %s" % (drv.name, wl,
                                                       str(e).splitlines()[0]))
                        continue
                    report(row, rnd, wl, drv.name, rows, failures)
                if wl == "call1" and a.floor_exe:
                    for name, url, peer in (("floor", router.url, router),
                                            ("floor-direct", None, None)):
                        try:
                            row = run_floor(name, url, peer, rnd, a)
                        except BenchError as e:
                            # A reference figure, not a check of a driver: reported.
                            print("e2e: %s round %d: %s" % (name, rnd, e),
                                  file=sys.stderr, flush=True)
                            continue
                        report(row, rnd, wl, name, rows, failures)
        for drv in drivers:
            try:
                drv.collect_info()
            except BenchError as e:
                drv.info = {"error": str(e)}
    finally:
        for drv in drivers:
            drv.stop()
        counters = {}
        for im in (router, broker):
            if im is not None:
                counters[im.mode] = im.stop()
        if rabbit is not None:
            rabbit.stop()

    conditions["loadavg_end"] = os.getloadavg()
    conditions["wall_s"] = time.monotonic() - started
    conditions["driver_info"] = {d.name: d.info for d in drivers}
    good = [r for r in rows if "error" not in r]
    best = _best(good)
    names = [d.name for d in drivers] + [f for f in FLOORS
                                         if any(r["driver"] == f for r in good)]
    rat = ratios(best, names)
    print_tables(best, names, rat)
    trows, cand = target_table(best, names, rat)
    if BASELINE in names and cand:
        print_targets(trows, cand)
    print("\nconditions: %d CPUs, load average %.2f at start, %.2f at end; %s; "
          "%.0f s wall" % (conditions["cpu_count"], conditions["loadavg_start"][0],
                           conditions["loadavg_end"][0], "quick" if a.quick else
                           "%d round(s) of %.0f s phases" % (a.repeat, a.duration),
                           conditions["wall_s"]))
    for mode, c in counters.items():
        if c:
            keys = ("received", "forwarded", "enqueued", "acknowledged", "released",
                    "dropped", "dropped_presettled")
            print("intermediary %s counters: %s" % (mode, ", ".join(
                "%s %s" % (k, c[k]) for k in keys if k in c)))
    if a.profile:
        import e2e_profile
        for r in good:
            for role, summ in (r.get("profile") or {}).items():
                print()
                print(e2e_profile.format_summary("profile %s %s r%d %s" % (
                    r["driver"], r["workload"], r["round"], role), summ))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"conditions": conditions, "runs": rows,
                       "best": [dict(v, key=list(k)) for k, v in best.items()],
                       "ratios": rat, "targets": trows,
                       "intermediary_counters": counters, "failures": failures},
                      f, indent=2, default=str)
        print("e2e: figures written to %s" % a.json)
    if failures:
        print("\ne2e: FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    tolerated = [r for r in good if r["tolerated"]]
    if tolerated:
        print("\ne2e: messages lost, known and reported (the original driver's, or "
              "pre-settled ones the router counted as dropped): " + "; ".join(
                  "%s %s: %s" % (r["driver"], r["workload"], "; ".join(r["problems"]))
                  for r in tolerated))
    print("e2e: no other loss, no duplicates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
