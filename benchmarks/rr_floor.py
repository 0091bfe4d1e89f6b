#!/usr/bin/env python3
"""The request/response floor: raw Proton C through an intermediary.

    .venv/bin/python benchmarks/rr_floor.py --url amqp://127.0.0.1:5672/ [--count N]
    .venv/bin/python benchmarks/rr_floor.py --direct        # client to server, no intermediary

What a call costs when no driver is involved: benchmarks/csrc/rr_floor.c's client sends
one 1 KiB request at a time (unsettled, reply-to its dynamic reply address, as oslo's
rpc-call) to its echo server through the intermediary, which answers pre-settled (as
rpc-reply); latency p50/p99 and round trips per second. benchmarks/e2e.py shows it next
to its call rows. The program is compiled on first use into build/bench/ (cc and
``pkg-config libqpid-proton``; Debian: libqpid-proton11-dev), again when its source is
newer; the build directory is not part of the tree.
"""
import argparse
import json
import os
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import peers  # noqa: E402
SOURCE = os.path.join(HERE, "csrc", "rr_floor.c")
BUILD = os.path.join(ROOT, "build", "bench")
# The call rows' address family: anycast through a router (qdrouterd's "balanced").
ADDRESS = "openstack.org/om/rpc/anycast/floor/rr"


class FloorUnavailable(RuntimeError):
    """No C compiler or no Proton C headers: the floor is left out, with this reason."""


def _proton_flags():
    """cflags and libs for Proton C. Debian's libqpid-proton.pc computes its prefix one
    directory short (/usr/lib/include), so its paths are used only if they exist;
    otherwise the compiler's default search paths find /usr/include and the library."""
    try:
        out = subprocess.run(["pkg-config", "--variable=includedir", "libqpid-proton"],
                             capture_output=True, text=True, timeout=10)
        inc = out.stdout.strip()
        if out.returncode == 0 and os.path.exists(os.path.join(inc, "proton",
                                                               "proactor.h")):
            flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libqpid-proton"],
                                   capture_output=True, text=True, timeout=10).stdout
            return shlex.split(flags)
    except (OSError, subprocess.TimeoutExpired):
        pass
    return ["-lqpid-proton"]


def build(out_dir=BUILD):
    """The path of the compiled program, compiling it if needed."""
    exe = os.path.join(out_dir, "rr_floor")
    if os.access(exe, os.X_OK) and os.path.getmtime(exe) >= os.path.getmtime(SOURCE):
        return exe
    cc = os.environ.get("CC", "cc")
    os.makedirs(out_dir, exist_ok=True)
    tmp = exe + ".%d.tmp" % os.getpid()
    try:
        proc = subprocess.run([cc, "-O2", "-Wall", "-o", tmp, SOURCE] + _proton_flags(),
                              capture_output=True, text=True, timeout=120)
    except OSError as exc:
        raise FloorUnavailable("no C compiler (%s): %s" % (cc, exc)) from None
    if proc.returncode != 0:
        raise FloorUnavailable("cannot compile %s (Proton C headers: Debian package "
                               "libqpid-proton11-dev): %s" % (SOURCE, proc.stderr.strip()
                                                              [-500:]))
    os.replace(tmp, exe)
    return exe


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _host_port(url):
    from urllib.parse import urlsplit
    u = urlsplit(url)
    return u.hostname or "127.0.0.1", str(u.port or 5672)


def measure(url=None, address=ADDRESS, count=2000, size=1024, warmup=20,
            reply_address=None, timeout=60.0, exe=None):
    """One client run against a fresh echo server, through ``url`` (None: the client
    connects to the server itself). Returns the client's JSON plus ``cpu_client_s``
    and ``cpu_server_s`` (CPU seconds of each program over the run); raises RuntimeError if the exchange fails."""
    exe = exe or build()
    if url is None:
        host, port = "127.0.0.1", str(_free_port())
        server_args = [exe, "server", "--listen", host, port, address]
    else:
        host, port = _host_port(url)
        server_args = [exe, "server", host, port, address]
    errors = tempfile.TemporaryFile(mode="w+")
    server = subprocess.Popen(server_args, stdout=subprocess.PIPE, stderr=errors,
                              text=True)
    try:
        # "ready": its receiver is attached (through a router: the address now has a
        # consumer, so the client's sender gets credit at once).
        if server.stdout.readline().strip() != "ready":
            errors.seek(0)
            raise RuntimeError("rr_floor server did not start: %s" % errors.read())
        args = [exe, "client", host, port, address, str(count), str(size), str(warmup)]
        if reply_address:
            args.append(reply_address)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        client = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        try:
            out, err = client.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            client.kill()
            client.communicate()
            raise RuntimeError("rr_floor client: no answer within %.0f s" % timeout)
        if client.returncode != 0:
            raise RuntimeError("rr_floor client failed (%s): %s" % (client.returncode,
                                                                    err.strip()))
        result = json.loads(out)
        # The children's rusage grew by the client's when it was reaped (the server
        # is still running, so not in it).
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        result["cpu_client_s"] = round(after.ru_utime + after.ru_stime
                                       - before.ru_utime - before.ru_stime, 3)
        result["cpu_server_s"] = peers.proc_cpu(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        errors.close()
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="the intermediary, e.g. amqp://127.0.0.1:5672/")
    where.add_argument("--direct", action="store_true", help="no intermediary")
    ap.add_argument("--address", default=ADDRESS)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--reply-address", help="a fixed reply address (peers without "
                                            "dynamic sources)")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args(argv)
    for _ in range(a.repeat):
        t = time.monotonic()
        r = measure(None if a.direct else a.url, a.address, a.count, a.size, a.warmup,
                    a.reply_address)
        r["wall_s"] = round(time.monotonic() - t, 2)
        print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
