"""The intermediaries the benchmarks run through: fastamqp's embedded one, started in
its own process, or one they did not start (qdrouterd, qpidd, RabbitMQ) given by URL.

Both kinds answer the same questions, as far as they can:

* ``url``, ``host``, ``port``, ``mode``;
* ``cpu()``: the intermediary process's user+system CPU seconds, from /proc (for an
  external one: the process listening on its port on this machine, if /proc lets us
  see it; else None);
* ``dropped_presettled()``: its count of pre-settled deliveries discarded so far
  (embedded: the ``dropped_presettled`` counter; qdrouterd: the router entity's
  ``droppedPresettledDeliveries`` through ``$management``, what ``qdstat -g`` shows;
  anything else: None);
* ``product()``: "product version" from its Open frame;
* ``stop()``: stops an embedded one and returns its final counters (an external one is
  left alone: None).
"""
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
from urllib.parse import urlsplit


class PeerError(RuntimeError):
    pass


def proc_cpu(pid):
    """User+system CPU seconds of a live process (all threads), from /proc."""
    if not pid:
        return None
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def listener_pid(port):
    """The pid of the process listening on TCP ``port`` here, or None: the listening
    socket's inode from /proc/net/tcp{,6}, then the process holding it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    local, state, inode = cols[1], cols[3], cols[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add("socket:[%s]" % inode)
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    if not inodes:
        return None
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir("/proc/%s/fd" % pid):
                if os.readlink("/proc/%s/fd/%s" % (pid, fd)) in inodes:
                    return int(pid)
        except OSError:
            continue
    return None


def qdrouterd_dropped_presettled(url, timeout=5.0):
    """The router entity's droppedPresettledDeliveries, or None if ``url`` is not a
    qdrouterd (no $management agent, or one that does not know the attribute)."""
    from proton import Message
    from proton.utils import BlockingConnection, SyncRequestResponse
    try:
        conn = BlockingConnection(url, timeout=timeout)
    except Exception:  # noqa: BLE001 - not reachable: no answer
        return None
    try:
        reply = SyncRequestResponse(conn, "$management").call(Message(
            properties={"operation": "QUERY", "type": "org.amqp.management",
                        "name": "self", "entityType": "org.apache.qpid.dispatch.router"},
            body={"attributeNames": ["droppedPresettledDeliveries"]}))
        return int(reply.body["results"][0][0])
    except Exception:  # noqa: BLE001 - not a qdrouterd
        return None
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass


def open_product(url, timeout=5.0):
    """"product version" from the peer's Open properties, or None."""
    from proton import symbol
    from proton.utils import BlockingConnection
    try:
        conn = BlockingConnection(url, timeout=timeout)
    except Exception:  # noqa: BLE001
        return None
    try:
        props = conn.conn.remote_properties or {}
        product = props.get(symbol("product"))
        version = props.get(symbol("version"))
        return " ".join(str(x) for x in (product, version) if x) or None
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass


class Embedded:
    """``python -m fastamqp.intermediary --mode MODE --engine ENGINE`` in its own
    process on a free port of 127.0.0.1 (read back from its banner)."""

    external = False

    def __init__(self, mode, engine="python", python=sys.executable, env=None,
                 extra_args=(), argv=None, preexec_fn=None):
        self.mode = mode
        argv = argv or [python, "-m", "fastamqp.intermediary"]
        argv = list(argv) + ["--mode", mode, "--listen", "127.0.0.1:0",
                             "--engine", engine] + list(extra_args)
        self.stderr = tempfile.TemporaryFile(mode="w+")
        # cwd outside the tree: the child imports the fastamqp of its PYTHONPATH.
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.stderr,
                                     env=env, text=True, cwd=tempfile.gettempdir(),
                                     preexec_fn=preexec_fn)
        self.pid = self.proc.pid
        self.counters = None
        banner = self.proc.stdout.readline()
        m = re.search(r"listening on amqp://127\.0\.0\.1:(\d+)", banner)
        if not m:
            self.proc.kill()
            self.proc.wait()
            raise PeerError("the %s did not start: %r%s" % (mode, banner,
                                                            self.stderr_tail()))
        self.host, self.port = "127.0.0.1", int(m.group(1))
        self.url = "amqp://127.0.0.1:%d/" % self.port
        self._lines = queue.Queue()
        self._rest = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("{") and line.rstrip().endswith("}"):
                self._lines.put(line)      # a SIGUSR1 snapshot: one line
            else:
                self._rest.append(line)    # the final counters, indented
        self._lines.put(None)

    def stderr_tail(self, n=1500):
        try:
            self.stderr.seek(0)
            text = self.stderr.read().strip()
        except (OSError, ValueError):
            return ""
        return (":\n" + text[-n:]) if text else ""

    def cpu(self):
        return proc_cpu(self.pid)

    def snapshot(self, timeout=10.0):
        """Its counters now (it prints them on SIGUSR1), or None."""
        if self.proc.poll() is not None:
            return None
        self.proc.send_signal(signal.SIGUSR1)
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return None
        return json.loads(line) if line else None

    def dropped_presettled(self):
        c = self.snapshot()
        return None if c is None else c.get("dropped_presettled")

    def product(self):
        return open_product(self.url)

    def stop(self, timeout=30.0):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        text = "".join(self._rest)
        try:
            self.counters = json.loads(text[text.index("{"):])
        except ValueError:
            pass
        return self.counters


class External:
    """An intermediary given by URL, not started here and never stopped here."""

    external = True

    def __init__(self, mode, url):
        u = urlsplit(url)
        if u.scheme not in ("amqp", "amqps") or not u.hostname:
            raise PeerError("%s: expected amqp://HOST:PORT/" % url)
        self.mode = mode
        self.url = url
        self.host, self.port = u.hostname, u.port or 5672
        local = self.host in ("127.0.0.1", "localhost", "::1")
        self.pid = listener_pid(self.port) if local else None
        self.counters = None

    def cpu(self):
        return proc_cpu(self.pid)

    def dropped_presettled(self):
        return qdrouterd_dropped_presettled(self.url)

    def product(self):
        return open_product(self.url)

    def stop(self):
        return None


def peer(mode, url=None, **embedded):
    """``External(mode, url)`` if a URL is given, else a started ``Embedded``."""
    return External(mode, url) if url else Embedded(mode, **embedded)
