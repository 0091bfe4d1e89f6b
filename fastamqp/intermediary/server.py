"""The AMQP side of the intermediary: sockets, Proton transports and engine events.

One daemon thread owns every Proton object and runs a select() loop over plain sockets
and Proton Transport/Connection/Collector objects (no proton.reactor): owning the loop is
what lets the fault hooks stop reading and ticking (pause), cut sockets without a Close
frame (drop_connections) and rebind the same ports (restart). Other threads talk to the
loop only through ``call()``.

Routing decisions live in routing.py; this module implements its ``Wire`` port.
"""
from __future__ import annotations

import errno
import logging
import queue
import select
import socket
import threading
import time
from typing import List, Optional, Tuple

from proton import (Collector, Condition, Connection, Disposition, Endpoint, Event, Link,
                    Transport, TransportException, symbol)

from . import routing

log = logging.getLogger(__name__)

_TERMINAL = {
    Disposition.ACCEPTED: "accepted",
    Disposition.REJECTED: "rejected",
    Disposition.RELEASED: "released",
    Disposition.MODIFIED: "modified",
}
_STATE = {v: k for k, v in _TERMINAL.items()}
_READ_CHUNK = 65536


class _Conn:
    __slots__ = ("sock", "transport", "connection", "collector", "links", "peer", "dead")

    def __init__(self, sock, transport, connection, collector, peer):
        self.sock = sock
        self.transport = transport
        self.connection = connection
        self.collector = collector
        self.links = set()
        self.peer = peer
        self.dead = False


class _Link:
    """Our handle for an attached link, kept in the Proton link's attachments."""
    __slots__ = ("conn", "link", "session", "producer", "consumer", "gone", "address")

    def __init__(self, conn, link, address):
        self.conn = conn
        self.link = link
        self.session = link.session
        self.address = address
        self.producer = None
        self.consumer = None
        self.gone = False


def _handle(link) -> Optional[_Link]:
    return getattr(link, "_fa", None)


class Server:
    def __init__(self, *, mode: str, product: str, version: str, container_id: str,
                 make_core, counters: routing.Counters, faults: routing.FaultRules,
                 idle_timeout: Optional[float] = None, sasl_mechanisms: str = "ANONYMOUS"):
        self.mode = mode
        self.product = product
        self.version = version
        self.container_id = container_id
        self.make_core = make_core
        self.counters = counters
        self.faults = faults
        self.idle_timeout = idle_timeout
        self.sasl_mechanisms = sasl_mechanisms
        self.core = None
        self.endpoints: List[Tuple[str, int]] = []
        self._listeners: List[socket.socket] = []
        self._conns = {}
        self._commands: "queue.Queue" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._paused = False
        self._wake_r = self._wake_w = None
        self._key = 0

    # -- lifecycle (any thread) ----------------------------------------------------

    def start(self, endpoints) -> List[Tuple[str, int]]:
        if self._thread is not None:
            raise RuntimeError("already running")
        self.core = self.make_core(self)
        bound = []
        try:
            for host, port in endpoints:
                s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                  socket.SOCK_STREAM)
                # Lets restart() rebind while old connections sit in TIME_WAIT.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                s.listen(128)
                s.setblocking(False)
                self._listeners.append(s)
                bound.append((host, s.getsockname()[1]))
        except Exception:
            for s in self._listeners:
                s.close()
            self._listeners = []
            raise
        self.endpoints = bound
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        self._paused = False
        self._thread = threading.Thread(target=self._run, name="fastamqp-intermediary",
                                        daemon=True)
        self._thread.start()
        return bound

    def stop(self, clean: bool = False, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        try:
            self.call(self._shutdown, clean, timeout=timeout)
        except Exception:
            log.exception("intermediary shutdown")
        self._thread.join(timeout)
        self._thread = None
        for s in (self._wake_r, self._wake_w):
            try:
                s.close()
            except OSError:
                pass

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def call(self, fn, *args, timeout: float = 5.0):
        """Run ``fn(*args)`` on the loop thread and return its result."""
        if not self.running or threading.current_thread() is self._thread:
            return fn(*args)
        done = threading.Event()
        box = {}

        def job():
            try:
                box["result"] = fn(*args)
            except BaseException as e:  # handed back to the caller
                box["error"] = e
            finally:
                done.set()

        self._commands.put(job)
        self._wake()
        if not done.wait(timeout):
            raise TimeoutError("intermediary loop did not answer within %ss" % timeout)
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def _wake(self):
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # a full pipe already means "wake up"

    # -- commands (loop thread) ----------------------------------------------------

    def _shutdown(self, clean):
        self._stopping = True
        for c in list(self._conns.values()):
            if clean and not c.dead:
                try:
                    c.connection.condition = Condition("amqp:connection:forced",
                                                       "intermediary shutting down")
                    c.connection.close()
                    self._write(c, final=True)
                except Exception:
                    log.debug("clean close of %s failed", c.peer, exc_info=True)
            self._teardown(c)
        for s in self._listeners:
            s.close()
        self._listeners = []

    def pause(self):
        self._paused = True

    def resume(self):
        self._paused = False

    def drop_connections(self) -> int:
        n = 0
        for c in list(self._conns.values()):
            self._teardown(c)
            n += 1
        return n

    def close_links(self, prefix: str) -> int:
        n = 0
        for c in list(self._conns.values()):
            for h in list(c.links):
                if h.address is not None and h.address.startswith(prefix):
                    h.link.condition = Condition("amqp:link:detach-forced",
                                                 "closed by a test fault hook")
                    h.link.close()
                    self._link_gone(h)
                    n += 1
        self._process()
        return n

    def recheck_credit(self):
        for c in self._conns.values():
            for h in c.links:
                if h.producer is not None:
                    self.core.dirty.add(h.producer)
        self._process()

    def snapshot(self) -> dict:
        return routing.snapshot(self.counters, self.core)

    # -- the loop --------------------------------------------------------------------

    def _run(self):
        try:
            while not self._stopping:
                self._iterate()
        except Exception:
            log.exception("intermediary loop crashed")
        finally:
            for c in list(self._conns.values()):
                self._teardown(c)
            for s in self._listeners:
                s.close()
            self._listeners = []

    def _iterate(self):
        now = time.monotonic()
        timeout = 1.0
        rlist = [self._wake_r]
        wlist = []
        if not self._paused:
            rlist.extend(self._listeners)
            for c in list(self._conns.values()):
                t = c.transport
                try:
                    deadline = t.tick(now)
                    cap = t.capacity()
                    pending = t.pending()
                except TransportException:
                    self._teardown(c)
                    continue
                if deadline:
                    timeout = min(timeout, max(0.0, deadline - now))
                if cap > 0:
                    rlist.append(c.sock)
                if pending > 0:
                    wlist.append(c.sock)
                elif pending < 0:
                    self._teardown(c)
        try:
            readable, writable, _ = select.select(rlist, wlist, [], timeout)
        except (OSError, ValueError):
            # A socket closed under us by a command; the next pass rebuilds the sets.
            return
        if self._wake_r in readable:
            try:
                while self._wake_r.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        self._run_commands()
        if self._paused or self._stopping:
            return
        for s in readable:
            if s is self._wake_r:
                continue
            if s in self._listeners:
                self._accept(s)
            else:
                c = self._conns.get(s)
                if c is not None:
                    self._read(c)
        for s in writable:
            c = self._conns.get(s)
            if c is not None:
                self._write(c)
        self._process()

    def _run_commands(self):
        while True:
            try:
                job = self._commands.get_nowait()
            except queue.Empty:
                return
            job()

    def _accept(self, listener):
        while True:
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("accept: %s", e)
                return
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            transport = Transport(Transport.SERVER)
            if self.idle_timeout:
                transport.idle_timeout = self.idle_timeout
            sasl = transport.sasl()
            sasl.allowed_mechs(self.sasl_mechanisms)
            connection = Connection()
            collector = Collector()
            connection.collect(collector)
            transport.bind(connection)
            self._conns[sock] = _Conn(sock, transport, connection, collector, peer)
            self.counters.connections += 1
            self.counters.totals["connections_total"] += 1

    def _read(self, c: _Conn):
        try:
            cap = c.transport.capacity()
        except TransportException:
            self._teardown(c)
            return
        if cap <= 0:
            return
        try:
            data = c.sock.recv(min(cap, _READ_CHUNK))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._teardown(c)
            return
        if not data:
            # The peer is gone; whatever it did not close cleanly is cleaned up here.
            self._teardown(c)
            return
        try:
            c.transport.push(data)
        except TransportException:
            self._teardown(c)

    def _write(self, c: _Conn, final: bool = False):
        t = c.transport
        while not c.dead:
            try:
                pending = t.pending()
            except TransportException:
                pending = -1
            if pending < 0:
                if not final:
                    # Head closed and everything written: the Close frame is out.
                    self._teardown(c)
                return
            if pending == 0:
                return
            data = t.peek(pending)
            try:
                sent = c.sock.send(data)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._teardown(c)
                return
            t.pop(sent)
            if sent < len(data):
                return

    def _teardown(self, c: _Conn):
        if c.dead:
            return
        c.dead = True
        self._conns.pop(c.sock, None)
        try:
            c.sock.close()
        except OSError:
            pass
        for h in list(c.links):
            self._link_gone(h)
        self.counters.connections -= 1

    # -- events ------------------------------------------------------------------------

    def _process(self):
        """Drain every collector until quiet; routing crosses connections."""
        if self._paused:
            return
        for _ in range(1000):
            busy = False
            for c in list(self._conns.values()):
                while not c.dead:
                    ev = c.collector.peek()
                    if ev is None:
                        break
                    busy = True
                    try:
                        self._dispatch(c, ev)
                    except Exception:
                        log.exception("event %s on %s", ev.type, c.peer)
                        self._teardown(c)
                        break
                    c.collector.pop()
            if self.core is not None:
                for p in self.core.take_dirty():
                    busy = True
                    self._topup(p)
            if not busy:
                break
        for c in list(self._conns.values()):
            self._write(c)

    def _dispatch(self, c: _Conn, ev):
        t = ev.type
        if t == Event.DELIVERY:
            dlv = ev.delivery
            link = ev.link
            if link.is_receiver:
                self._on_incoming(_handle(link), link, dlv)
            else:
                self._on_outcome(_handle(link), dlv)
        elif t == Event.LINK_FLOW:
            h = _handle(ev.link)
            if h is not None and h.consumer is not None and not h.gone:
                self._consumer_flow(h)
        elif t == Event.LINK_REMOTE_OPEN:
            self._on_link_open(c, ev.link)
        elif t in (Event.LINK_REMOTE_CLOSE, Event.LINK_REMOTE_DETACH):
            link = ev.link
            h = _handle(link)
            if h is not None:
                self._link_gone(h)
            if link.state & Endpoint.LOCAL_ACTIVE:
                if t == Event.LINK_REMOTE_CLOSE:
                    link.close()
                else:
                    link.detach()
        elif t == Event.SESSION_REMOTE_OPEN:
            if ev.session.state & Endpoint.LOCAL_UNINIT:
                ev.session.open()
        elif t == Event.SESSION_REMOTE_CLOSE:
            # Proton raises no per-link events for links ended by their session.
            for h in list(c.links):
                if h.session == ev.session:
                    self._link_gone(h)
            if ev.session.state & Endpoint.LOCAL_ACTIVE:
                ev.session.close()
        elif t == Event.CONNECTION_REMOTE_OPEN:
            conn = ev.connection
            if conn.state & Endpoint.LOCAL_UNINIT:
                conn.container = self.container_id
                conn.properties = {symbol("product"): self.product,
                                   symbol("version"): self.version}
                conn.open()
        elif t == Event.CONNECTION_REMOTE_CLOSE:
            for h in list(c.links):
                self._link_gone(h)
            if ev.connection.state & Endpoint.LOCAL_ACTIVE:
                ev.connection.close()
        elif t == Event.TRANSPORT_ERROR:
            cond = ev.transport.condition
            log.debug("transport error from %s: %s", c.peer, cond)

    # -- links -----------------------------------------------------------------------

    def _refuse(self, link, name: str, description: str):
        # A null terminus in our attach, then a detach with the error: how AMQP says
        # the node cannot be reached.
        link.open()
        link.condition = Condition(name, description)
        link.close()

    def _on_link_open(self, c: _Conn, link):
        if not link.state & Endpoint.LOCAL_UNINIT:
            return
        if link.is_receiver:
            remote = link.remote_target
        else:
            remote = link.remote_source
        if remote.dynamic:
            address = self.core.dynamic_address()
        else:
            address = remote.address
            if address is None:
                if link.is_receiver:
                    self._refuse(link, "amqp:not-implemented",
                                 "anonymous relay is not supported")
                else:
                    self._refuse(link, "amqp:invalid-field", "source address required")
                return
        refusal = self.faults.refusal(routing.normalize(address))
        if refusal is not None:
            self._refuse(link, *refusal)
            return
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        if link.is_receiver:
            link.target.address = address
        else:
            link.source.address = address
        link.snd_settle_mode = link.remote_snd_settle_mode
        key = routing.normalize(address)
        h = _Link(c, link, key)
        link._fa = h
        if link.is_receiver:
            # We settle first and always answer with an outcome.
            link.rcv_settle_mode = Link.RCV_FIRST
            link.open()
            h.producer = routing.Producer(key, ref=h)
            self.core.attach_producer(h.producer)
        else:
            link.open()
            presettled = link.remote_snd_settle_mode == Link.SND_SETTLED
            h.consumer = routing.Consumer(key, presettled, ref=h)
            h.consumer.credit = link.credit
            self.core.attach_consumer(h.consumer)
        c.links.add(h)
        self.counters.links += 1
        self.counters.totals["links_total"] += 1

    def _link_gone(self, h: _Link):
        if h.gone:
            return
        h.gone = True
        h.conn.links.discard(h)
        # The handle lives in the C link's attachments and points back at Python
        # objects that hold the link: break the cycle Python's GC cannot see.
        h.link._fa = None
        self.counters.links -= 1
        if h.producer is not None:
            self.core.detach_producer(h.producer)
        if h.consumer is not None:
            self.core.detach_consumer(h.consumer)

    def _consumer_flow(self, h: _Link):
        link = h.link
        h.consumer.credit = link.credit
        self.core.consumer_flow(h.consumer)
        if link.drain_mode and link.credit > 0:
            link.drained()
        h.consumer.credit = link.credit

    def _topup(self, p: routing.Producer):
        h = p.ref
        if h is None or h.gone:
            return
        want = self.core.desired_credit(p)
        have = h.link.credit
        if want > have:
            h.link.flow(want - have)

    # -- deliveries ------------------------------------------------------------------

    def _on_incoming(self, h: Optional[_Link], link, dlv):
        if dlv.aborted:
            dlv._fa_buf = None
            dlv.settle()
            if h is not None and h.producer is not None:
                self.core.dirty.add(h.producer)
            return
        if not dlv.readable:
            # Only the link's current delivery is readable: anything else is a state
            # update on a delivery already taken (e.g. the producer settling it).
            return
        chunk = link.recv(dlv.pending) or b""
        # Buffering through the delivery's attachments costs C calls, so only
        # multi-frame messages pay for it.
        buf = getattr(dlv, "_fa_buf", None)
        if dlv.partial:
            if buf is None:
                buf = dlv._fa_buf = []
            buf.append(chunk)
            return
        if buf:
            buf.append(chunk)
            data = b"".join(buf)
            dlv._fa_buf = None
        else:
            data = chunk
        link.advance()
        settled = dlv.settled
        if h is None or h.gone or h.producer is None:
            # A link we have closed or refused: nobody will route this.
            if not settled:
                dlv.update(Disposition.RELEASED)
            dlv.settle()
            return
        if settled:
            dlv.settle()
        m = routing.Message(data, settled, origin=None if settled else dlv)
        self.core.deliver(h.producer, m)

    def _on_outcome(self, h: Optional[_Link], dlv):
        state = dlv.remote_state
        kind = _TERMINAL.get(state)
        if kind is None and not dlv.settled:
            return  # received / no state yet
        # Our delivery tags are the routing keys (see transmit); the core ignores
        # keys it does not hold, e.g. of deliveries sent pre-settled.
        try:
            key = int(dlv.tag)
        except (TypeError, ValueError):
            key = None
        remote = dlv.remote
        if kind is None:
            # Settled without an outcome: the consumer is done with it.
            outcome = routing.Outcome("accepted")
        elif kind == "rejected":
            cond = remote.condition
            outcome = routing.Outcome(
                "rejected", condition=(cond.name, cond.description) if cond else None)
        elif kind == "modified":
            outcome = routing.Outcome("modified", failed=remote.failed,
                                      undeliverable=remote.undeliverable,
                                      annotations=remote.annotations)
        else:
            outcome = routing.Outcome(kind)
        dlv.settle()
        if key is not None and h is not None and not h.gone and h.consumer is not None:
            self.core.consumer_outcome(h.consumer, key, outcome)

    # -- the Wire port -------------------------------------------------------------------

    def transmit(self, consumer: routing.Consumer, data: bytes, settled: bool):
        link = consumer.ref.link
        self._key += 1
        key = self._key
        dlv = link.delivery(str(key))
        link.stream(data)
        link.advance()
        if settled:
            dlv.settle()
        return key

    def settle(self, origin, outcome: routing.Outcome):
        dlv = origin
        local = dlv.local
        if outcome.kind == "rejected" and outcome.condition is not None:
            local.condition = Condition(*outcome.condition)
        elif outcome.kind == "modified":
            local.failed = outcome.failed
            local.undeliverable = outcome.undeliverable
            if outcome.annotations:
                local.annotations = outcome.annotations
        dlv.update(_STATE[outcome.kind])
        dlv.settle()
