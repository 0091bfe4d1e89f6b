"""The AMQP side of the intermediary: sockets, Proton transports and engine events.

One daemon thread owns every Proton object and runs a select() loop over plain sockets
and Proton Transport/Connection/Collector objects (no proton.reactor): owning the loop is
what lets the fault hooks stop reading and ticking (pause), cut sockets without a Close
frame (drop_connections) and rebind the same ports (restart). Other threads talk to the
loop only through ``call()``.

Routing decisions live in routing.py; this module implements its ``Wire`` port.
"""
from __future__ import annotations

import atexit
import errno
import logging
import os
import queue
import secrets
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from typing import Dict, List, Optional, Tuple

from proton import (SASL, SSL, Array, Collector, Condition, Connection, Delivery,
                    Disposition, Endpoint, Event, Link, SSLDomain, SSLException,
                    Terminus, Transport, TransportException, symbol)

# python-qpid-proton's own cffi layer: peeking at an event's type here, before the
# binding wraps it (Event.wrap builds a wrapper for the event AND its context object),
# lets the loop drop the events it has no use for unwrapped. Those are most of them: a
# forwarded message raises about four PN_TRANSPORT events for its two deliveries and
# one flow (profiled: the wrappers were most of this process's CPU).
from cproton import (PN_CONNECTION_REMOTE_CLOSE, PN_CONNECTION_REMOTE_OPEN, PN_DELIVERY,
                     PN_LINK_FLOW, PN_LINK_REMOTE_CLOSE, PN_LINK_REMOTE_DETACH,
                     PN_LINK_REMOTE_OPEN,
                     PN_SESSION_REMOTE_CLOSE, PN_SESSION_REMOTE_OPEN, PN_TRANSPORT_ERROR,
                     isnull, pn_collector_peek, pn_collector_pop, pn_event_delivery,
                     pn_event_link, pn_event_type)

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
# The event types _dispatch acts on; the others are popped without being wrapped.
_HANDLED = frozenset((PN_DELIVERY, PN_LINK_FLOW, PN_LINK_REMOTE_OPEN, PN_LINK_REMOTE_CLOSE,
                      PN_LINK_REMOTE_DETACH, PN_SESSION_REMOTE_OPEN,
                      PN_SESSION_REMOTE_CLOSE, PN_CONNECTION_REMOTE_OPEN,
                      PN_CONNECTION_REMOTE_CLOSE, PN_TRANSPORT_ERROR))


class SaslSetupError(RuntimeError):
    """The Cyrus SASL server configuration of this process cannot serve our users."""


class _Cyrus:
    """The Cyrus SASL server configuration of this process.

    Cyrus reads its server configuration ONCE per process, when Proton sets up the first
    server-side SASL layer (proton/src/sasl/cyrus_sasl.c: ``pni_cyrus_server_once``),
    and the configuration directory and name are process globals (the first caller of
    ``pn_sasl_config_path/name`` wins). So every intermediary of a process shares one
    configuration: a private temporary directory holding ``fastamqp-intermediary.conf``
    (auxprop/sasldb, mech_list ANONYMOUS PLAIN EXTERNAL) and one sasldb. Each server adds
    its users when it starts and removes them when it stops; a server also checks after
    SASL that a PLAIN user is one of ITS users, so that intermediaries of one process do
    not let each other's users in.
    """

    NAME = "fastamqp-intermediary"
    MECHS = "ANONYMOUS PLAIN EXTERNAL"

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="fastamqp-sasl-")
        os.chmod(self.dir, 0o700)
        self.db = os.path.join(self.dir, "users.sasldb")
        with open(os.path.join(self.dir, self.NAME + ".conf"), "w") as f:
            f.write("pwcheck_method: auxprop\n"
                    "auxprop_plugin: sasldb\n"
                    "sasldb_path: %s\n"
                    "mech_list: %s\n" % (self.db, self.MECHS))
        atexit.register(shutil.rmtree, self.dir, True)
        sasl = Transport(Transport.SERVER).sasl()
        sasl.config_path(self.dir)
        sasl.config_name(self.NAME)
        self._owners: Dict[str, Dict[int, str]] = {}   # user -> {server id: password}
        self._lock = threading.Lock()
        self._checked: Optional[bool] = None

    @staticmethod
    def _split(user: str):
        name, sep, realm = user.rpartition("@")
        return (name, realm) if sep and name else (user, None)

    def _saslpasswd(self, user: str, password: Optional[str]) -> None:
        exe = shutil.which("saslpasswd2") or "/usr/sbin/saslpasswd2"
        if not os.path.exists(exe):
            raise SaslSetupError("saslpasswd2 (Debian package sasl2-bin) is needed for "
                                 "SASL PLAIN users")
        name, realm = self._split(user)
        args = [exe, "-f", self.db]
        if realm:
            args += ["-u", realm]
        if password is None:
            args += ["-d", name]
            data = None
        else:
            args += ["-p", "-c", name]   # -p: the password comes on stdin, not argv
            data = password.encode()
        proc = subprocess.run(args, input=data, capture_output=True)
        if proc.returncode != 0 and password is not None:
            # The message names the user only: never the password.
            raise SaslSetupError("saslpasswd2 could not add user %r: %s"
                                 % (user, proc.stderr.decode(errors="replace").strip()))

    def add(self, owner: int, users: Dict[str, str]) -> None:
        with self._lock:
            self._self_check()
            for user, password in users.items():
                held = self._owners.setdefault(user, {})
                if any(p != password for o, p in held.items() if o != owner):
                    log.warning("SASL user %r is defined by several intermediaries with "
                                "different passwords; the last one started wins", user)
                held[owner] = password
                self._saslpasswd(user, password)

    def remove(self, owner: int) -> None:
        with self._lock:
            for user in list(self._owners):
                held = self._owners[user]
                if held.pop(owner, None) is None:
                    continue
                if held:
                    self._saslpasswd(user, next(iter(held.values())))
                else:
                    del self._owners[user]
                    self._saslpasswd(user, None)

    def _self_check(self) -> None:
        """Log in with a throw-away user over an in-memory transport pair: proves that
        Cyrus reads OUR configuration (someone else may have set the process's first)."""
        if self._checked is not None:
            if not self._checked:
                raise SaslSetupError(self._failure)
            return
        if not SASL.extended():
            self._checked = False
            self._failure = ("this Proton build has no Cyrus SASL: the intermediary "
                             "cannot authenticate SASL PLAIN users")
            raise SaslSetupError(self._failure)
        user, password = "fastamqp-probe-%s" % secrets.token_hex(4), secrets.token_hex(16)
        self._saslpasswd(user, password)
        try:
            ok = _loopback_login(user, password)
        finally:
            self._saslpasswd(user, None)
        self._checked = ok
        if not ok:
            self._failure = (
                "Cyrus SASL in this process does not use the intermediary's configuration "
                "(another component set the Cyrus config path/name first, e.g. a client "
                "with sasl_config_dir); SASL PLAIN users cannot be served")
            raise SaslSetupError(self._failure)


def _loopback_login(user: str, password: str) -> bool:
    server = Transport(Transport.SERVER)
    ssasl = server.sasl()
    ssasl.allow_insecure_mechs = True
    ssasl.allowed_mechs("PLAIN")
    server.bind(Connection())
    client = Transport(Transport.CLIENT)
    csasl = client.sasl()
    csasl.allow_insecure_mechs = True
    csasl.allowed_mechs("PLAIN")
    conn = Connection()
    conn.user, conn.password = user, password
    client.bind(conn)
    conn.open()
    for _ in range(20):
        for a, b in ((client, server), (server, client)):
            n = a.pending()
            if n > 0:
                b.push(a.peek(n))
                a.pop(n)
        if csasl.outcome is not None:
            break
    return csasl.outcome == SASL.OK


_cyrus: Optional[_Cyrus] = None
_cyrus_lock = threading.Lock()


def cyrus() -> _Cyrus:
    global _cyrus
    with _cyrus_lock:
        if _cyrus is None:
            _cyrus = _Cyrus()
        return _cyrus


class _ListenerConf:
    """What a listening socket does with the connections it accepts."""
    __slots__ = ("host", "port", "ssl", "domain", "mechs")

    def __init__(self, host, port, ssl, mechs):
        self.host, self.port, self.ssl, self.mechs = host, port, ssl, mechs
        self.domain = None
        if ssl is not None:
            domain = SSLDomain(SSLDomain.MODE_SERVER)
            try:
                domain.set_credentials(ssl.cert_file, ssl.key_file or ssl.cert_file,
                                       ssl.key_password)
            except SSLException:
                raise ValueError("cannot load the TLS certificate %s / key %s (wrong "
                                 "file or key password)" % (ssl.cert_file, ssl.key_file))
            if ssl.ca_file:
                # Clients must present a certificate signed by this CA: its subject
                # is what SASL EXTERNAL authenticates.
                domain.set_trusted_ca_db(ssl.ca_file)
                domain.set_peer_authentication(SSLDomain.VERIFY_PEER, ssl.ca_file)
            else:
                domain.set_peer_authentication(SSLDomain.ANONYMOUS_PEER)
            if ssl.allow_cleartext:
                domain.allow_unsecured_client()
            self.domain = domain


class _Conn:
    __slots__ = ("sock", "transport", "connection", "collector", "links", "peer", "dead",
                 "listener")

    def __init__(self, sock, transport, connection, collector, peer, listener=None):
        self.sock = sock
        self.transport = transport
        self.connection = connection
        self.collector = collector
        self.links = set()
        self.peer = peer
        self.dead = False
        self.listener = listener


def _symbols(data):
    """The symbols of a terminus capabilities field: one symbol or an array."""
    data.rewind()
    if not data.next():
        return set()
    value = data.get_object()
    if isinstance(value, Array):
        return {str(v) for v in value.elements}
    return {str(value)}


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
                 idle_timeout: Optional[float] = None, sasl_mechanisms: str = "ANONYMOUS",
                 users: Optional[Dict[str, str]] = None, ssl=None):
        self.mode = mode
        self.product = product
        self.version = version
        self.container_id = container_id
        self.make_core = make_core
        self.counters = counters
        self.faults = faults
        self.idle_timeout = idle_timeout
        self.sasl_mechanisms = sasl_mechanisms
        self.users = dict(users or {})
        self.ssl = ssl                      # default TLSConfig of (host, port) listeners
        self.counters.totals.setdefault("auth_failures", 0)
        self.core = None
        self.endpoints: List[Tuple[str, int]] = []
        self._listeners: List[socket.socket] = []
        self._listener_conf = {}            # listening socket -> _ListenerConf
        self._cyrus_users = False
        self._conns = {}
        self._commands: "queue.Queue" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._paused = False
        self._wake_r = self._wake_w = None
        self._key = 0

    # -- lifecycle (any thread) ----------------------------------------------------

    def start(self, endpoints) -> List[Tuple[str, int]]:
        """``endpoints``: (host, port) or (host, port, tls_config, sasl_mechanisms);
        a tls_config or mechanisms of None means the server's own."""
        if self._thread is not None:
            raise RuntimeError("already running")
        confs = []
        for ep in endpoints:
            host, port = ep[0], ep[1]
            tls = ep[2] if len(ep) > 2 else self.ssl
            mechs = (ep[3] if len(ep) > 3 else None) or self.sasl_mechanisms
            confs.append(_ListenerConf(host, port, tls, mechs.upper()))
        # Before this server makes any SASL layer: Cyrus reads its configuration once.
        cy = cyrus()
        if self.users:
            cy.add(id(self), self.users)   # users live in the process's sasldb
            self._cyrus_users = True
        self.core = self.make_core(self)
        bound = []
        try:
            for conf in confs:
                host, port = conf.host, conf.port
                s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                  socket.SOCK_STREAM)
                # Lets restart() rebind while old connections sit in TIME_WAIT.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                s.listen(128)
                s.setblocking(False)
                self._listeners.append(s)
                conf.port = s.getsockname()[1]
                self._listener_conf[s] = conf
                bound.append((host, conf.port))
        except Exception:
            for s in self._listeners:
                s.close()
            self._listeners = []
            self._listener_conf = {}
            self._release_users()
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
        self._release_users()

    def _release_users(self):
        if self._cyrus_users:
            self._cyrus_users = False
            try:
                cyrus().remove(id(self))
            except Exception:
                log.warning("could not remove SASL users from the sasldb", exc_info=True)

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
            conf = self._listener_conf.get(listener)
            transport = Transport(Transport.SERVER)
            if self.idle_timeout:
                transport.idle_timeout = self.idle_timeout
            sasl = transport.sasl()
            # PLAIN is acceptable on a cleartext listener: this is a test peer.
            sasl.allow_insecure_mechs = True
            sasl.allowed_mechs(conf.mechs if conf is not None else self.sasl_mechanisms)
            if conf is not None and conf.domain is not None:
                SSL(transport, conf.domain)
            connection = Connection()
            collector = Collector()
            connection.collect(collector)
            transport.bind(connection)
            self._conns[sock] = _Conn(sock, transport, connection, collector, peer, conf)
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
        try:
            cond = c.transport.condition
        except Exception:
            cond = None
        if cond is not None and cond.name == "amqp:unauthorized-access":
            # Cyrus refused the login; Proton has sent the SASL outcome (auth).
            self.counters.totals["auth_failures"] += 1
            log.info("SASL login from %s refused: %s", c.peer, cond.description)
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
                impl = c.collector._impl
                while not c.dead:
                    raw = pn_collector_peek(impl)
                    if isnull(raw):
                        break
                    busy = True
                    kind = pn_event_type(raw)
                    if kind in _HANDLED:
                        try:
                            self._dispatch(c, kind, raw)
                        except Exception:
                            log.exception("event %s on %s", kind, c.peer)
                            self._teardown(c)
                            break
                    pn_collector_pop(impl)
            if self.core is not None:
                for p in self.core.take_dirty():
                    busy = True
                    self._topup(p)
            if not busy:
                break
        for c in list(self._conns.values()):
            self._write(c)

    def _dispatch(self, c: _Conn, kind: int, raw):
        # The two events of every message wrap only the objects they use: Event.wrap
        # would also wrap its link, session, connection and transport.
        if kind == PN_DELIVERY:
            dlv = Delivery.wrap(pn_event_delivery(raw))
            link = dlv.link
            if link.is_receiver:
                self._on_incoming(_handle(link), link, dlv)
            else:
                self._on_outcome(_handle(link), dlv)
            return
        if kind == PN_LINK_FLOW:
            h = _handle(Link.wrap(pn_event_link(raw)))
            if h is not None and h.consumer is not None and not h.gone:
                self._consumer_flow(h)
            return
        ev = Event.wrap(raw)
        t = ev.type
        if t == Event.LINK_REMOTE_OPEN:
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
                refusal = self._check_login(c)
                conn.open()
                if refusal is not None:
                    self.counters.totals["auth_failures"] += 1
                    log.info("refusing %s: %s", c.peer, refusal)
                    conn.condition = Condition("amqp:unauthorized-access", refusal)
                    conn.close()
        elif t == Event.CONNECTION_REMOTE_CLOSE:
            for h in list(c.links):
                self._link_gone(h)
            if ev.connection.state & Endpoint.LOCAL_ACTIVE:
                ev.connection.close()
        elif t == Event.TRANSPORT_ERROR:
            cond = ev.transport.condition
            log.debug("transport error from %s: %s", c.peer, cond)

    def _check_login(self, c: _Conn) -> Optional[str]:
        """After SASL: the sasldb is shared by the intermediaries of this process, so a
        PLAIN user must also be one of this server's users."""
        try:
            sasl = c.transport.sasl()
            mech = (sasl.mech or "").upper()
        except Exception:
            return None
        user = c.transport.user or ""
        if mech == "PLAIN" and user not in self.users:
            return "user %r is not known to this intermediary" % user
        log.info("login from %s: user %r, SASL mechanism %s", c.peer, user, mech or "none")
        return None

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
            source = link.remote_source
            shared = "shared" in _symbols(source.capabilities)
            h.consumer = routing.Consumer(
                key, presettled, ref=h, shared_name=link.name if shared else None,
                keep=source.expiry_policy == Terminus.EXPIRE_NEVER)
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
