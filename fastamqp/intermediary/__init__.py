"""fastamqp's embedded AMQP 1.0 intermediary: a qdrouterd-like router or a qpidd-like broker.

It exists so that the driver, its tests and its demo run with nothing else installed.
It is a reference and a test double, not a production router:

    with Intermediary(mode="router") as im:
        transport_url = im.url          # amqp://127.0.0.1:PORT
        ...
        im.faults.pause()               # heartbeats lapse
        print(im.counters)

Routing rules are in ``routing`` (no Proton objects); the AMQP side is ``server``.

Security (SASL and TLS), per listener:

    tls = TLSConfig(cert_file="server.pem", key_file="server.key")
    im = Intermediary(listen=[("127.0.0.1", 0),                    # cleartext
                              Listener("127.0.0.1", 0, ssl=tls),    # TLS
                              Listener("127.0.0.1", 0, sasl_mechanisms="EXTERNAL",
                                       ssl=TLSConfig("server.pem", "server.key",
                                                     ca_file="ca.pem"))],
                      sasl_mechanisms="ANONYMOUS PLAIN", users={"alice": "secret"})

SASL is Cyrus's: PLAIN users go into a sasldb made with ``saslpasswd2`` in a private
temporary directory, next to a generated Cyrus configuration (``server._Cyrus``; Cyrus
reads one configuration per process, shared by all intermediaries of the process).
A refused login ends with the SASL outcome ``auth`` and the connection is closed.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import routing
from .routing import BALANCED, CLOSEST, MULTICAST  # noqa: F401

__all__ = ["Intermediary", "Faults", "Listener", "TLSConfig", "routing"]

ROUTER_PRODUCT = "qpid-dispatch-router"
BROKER_PRODUCT = "qpid-cpp"


def _version() -> str:
    try:
        from fastamqp import __version__
        return __version__
    except Exception:  # the package may be half-built; the intermediary does not care
        return "0"


@dataclasses.dataclass(frozen=True)
class TLSConfig:
    """TLS for a listener. With ``ca_file``, clients must present a certificate signed
    by that CA (what SASL EXTERNAL authenticates); ``allow_cleartext`` also accepts
    clients that do not start TLS."""

    cert_file: str
    key_file: Optional[str] = None          # None: the key is in cert_file
    key_password: Optional[str] = dataclasses.field(default=None, repr=False)
    ca_file: Optional[str] = None
    allow_cleartext: bool = False


@dataclasses.dataclass
class Listener:
    """One listening socket. ``ssl``/``sasl_mechanisms`` of None: the Intermediary's."""

    host: str = "127.0.0.1"
    port: int = 0
    ssl: Optional[TLSConfig] = None
    sasl_mechanisms: Optional[str] = None

    @property
    def url(self) -> str:
        host = ("[%s]" % self.host) if ":" in self.host else self.host
        return "amqp://%s:%d" % (host, self.port)


def _as_listener(item) -> Listener:
    if isinstance(item, Listener):
        return dataclasses.replace(item)
    host, port = item[0], item[1]
    return Listener(host, port, *item[2:])


class Faults:
    """Fault injection for tests. Prefixes are plain string prefixes of link addresses;
    settings persist across ``restart()``."""

    def __init__(self, owner: "Intermediary"):
        self._owner = owner

    def _call(self, fn, *args):
        srv = self._owner._server
        return srv.call(fn, *args) if srv is not None else fn(*args)

    def drop_connections(self) -> int:
        """Cut every client socket without an AMQP Close (as a crash would)."""
        srv = self._owner._server
        return srv.call(srv.drop_connections) if srv is not None else 0

    def pause(self) -> None:
        """Stop reading, writing, accepting and heartbeating until ``resume()``."""
        srv = self._owner._server
        if srv is not None:
            srv.call(srv.pause)

    def resume(self) -> None:
        srv = self._owner._server
        if srv is not None:
            srv.call(srv.resume)

    def refuse_links(self, address_prefix: str, condition: str = "amqp:not-found",
                     description: Optional[str] = None) -> None:
        """Refuse new attaches to matching addresses."""
        desc = description or "refused by a test fault hook"

        def apply():
            self._owner._rules.refuse[address_prefix] = (condition, desc)
        self._call(apply)

    def allow_links(self, address_prefix: str) -> None:
        self._call(lambda: self._owner._rules.refuse.pop(address_prefix, None))

    def close_links(self, address_prefix: str) -> int:
        """Detach open links on matching addresses with ``amqp:link:detach-forced``."""
        srv = self._owner._server
        return srv.call(srv.close_links, address_prefix) if srv is not None else 0

    def set_outcome(self, address_prefix: str, outcome: Optional[str],
                    delivery_failed: bool = False, undeliverable_here: bool = False) -> None:
        """Answer deliveries to matching addresses with ``outcome`` instead of routing
        them (pre-settled ones are dropped); ``None`` removes the rule."""
        def apply():
            if outcome is None:
                self._owner._rules.outcome.pop(address_prefix, None)
            else:
                cond = ("amqp:internal-error", "rejected by a test fault hook") \
                    if outcome == "rejected" else None
                self._owner._rules.outcome[address_prefix] = routing.Outcome(
                    outcome, failed=delivery_failed, undeliverable=undeliverable_here,
                    condition=cond)
        if outcome is not None and outcome not in routing.OUTCOMES:
            raise ValueError("outcome must be one of %s or None" % (routing.OUTCOMES,))
        self._call(apply)

    def withhold_credit(self, address_prefix: str, withhold: bool = True) -> None:
        """Grant no new credit to senders on matching addresses. Credit already granted
        cannot be taken back (AMQP has no revoke); new links get none at all."""
        def apply():
            if withhold:
                self._owner._rules.withhold.add(address_prefix)
            else:
                self._owner._rules.withhold.discard(address_prefix)
            srv = self._owner._server
            if srv is not None and srv.running and not withhold:
                srv.recheck_credit()
        self._call(apply)

    def clear(self) -> None:
        def apply():
            r = self._owner._rules
            r.refuse.clear()
            r.outcome.clear()
            had = bool(r.withhold)
            r.withhold.clear()
            srv = self._owner._server
            if had and srv is not None and srv.running:
                srv.recheck_credit()
        self._call(apply)

    def restart(self) -> None:
        self._owner.restart()


class Intermediary:
    """An in-process AMQP 1.0 router (``mode="router"``) or broker (``mode="broker"``).

    ``listen`` is a list of (host, port) or :class:`Listener`; port 0 picks an
    ephemeral port, and ``restart()`` reuses the ports actually bound.

    ``sasl_mechanisms`` (space separated: ANONYMOUS, PLAIN, EXTERNAL) and ``ssl`` (a
    :class:`TLSConfig`) apply to listeners that do not set their own; ``users`` maps
    user name (``user`` or ``user@realm``) to password for PLAIN.

    ``window`` is qdrouterd's ``linkCapacity`` (default 250): each producer's credit
    window and, in router mode, the depth of a consumer's undelivered list at which
    the router discards pre-settled deliveries (counter ``dropped_presettled``).
    """

    def __init__(self, mode: str = "router",
                 listen: Optional[Sequence[Union[Tuple[str, int], Listener]]] = None,
                 product: Optional[str] = None, version: Optional[str] = None,
                 router_id: str = "fastamqp",
                 addresses: Optional[Iterable[Tuple[str, str]]] = None,
                 queue_patterns: Optional[Iterable[str]] = None,
                 topic_patterns: Optional[Iterable[str]] = None,
                 container_id: Optional[str] = None,
                 default_distribution: str = routing.BALANCED,
                 window: int = routing.DEFAULT_WINDOW,
                 idle_timeout: Optional[float] = None,
                 sasl_mechanisms: str = "ANONYMOUS",
                 users: Optional[Dict[str, str]] = None,
                 ssl: Optional[TLSConfig] = None):
        if mode not in ("router", "broker"):
            raise ValueError("mode must be 'router' or 'broker'")
        self.mode = mode
        self.listen = list(listen) if listen else [("127.0.0.1", 0)]
        self._listeners = [_as_listener(item) for item in self.listen]
        self.product = product or (ROUTER_PRODUCT if mode == "router" else BROKER_PRODUCT)
        self.version = version or _version()
        self.router_id = router_id
        self.addresses = list(addresses) if addresses is not None else None
        self.queue_patterns = list(queue_patterns) if queue_patterns is not None else None
        self.topic_patterns = list(topic_patterns) if topic_patterns is not None else None
        self.container_id = container_id or ("fastamqp-%s-%s" % (mode, router_id))
        self.default_distribution = default_distribution
        self.window = window
        self.idle_timeout = idle_timeout
        self.sasl_mechanisms = sasl_mechanisms
        self._users = dict(users or {})
        self.ssl = ssl
        self._counters = routing.Counters()
        self._rules = routing.FaultRules()
        self._server = None
        self._bound: List[Tuple[str, int]] = []
        self._lock = threading.Lock()
        self.faults = Faults(self)

    def _make_core(self, wire):
        if self.mode == "router":
            return routing.RouterCore(wire, self._counters, self._rules,
                                      addresses=self.addresses,
                                      default=self.default_distribution,
                                      router_id=self.router_id, window=self.window)
        return routing.BrokerCore(wire, self._counters, self._rules,
                                  queue_patterns=self.queue_patterns,
                                  topic_patterns=self.topic_patterns, window=self.window)

    def start(self) -> "Intermediary":
        from .server import Server  # Proton is imported only when a server is needed
        with self._lock:
            if self._server is not None and self._server.running:
                return self
            # After a first start the listeners carry the ports actually bound.
            endpoints = [(lst.host, lst.port, lst.ssl or self.ssl, lst.sasl_mechanisms)
                         for lst in self._listeners]
            srv = Server(mode=self.mode, product=self.product, version=self.version,
                         container_id=self.container_id, make_core=self._make_core,
                         counters=self._counters, faults=self._rules,
                         idle_timeout=self.idle_timeout,
                         sasl_mechanisms=self.sasl_mechanisms,
                         users=self._users, ssl=self.ssl)
            self._bound = srv.start(endpoints)
            for lst, (_, port) in zip(self._listeners, self._bound):
                lst.port = port
            self._server = srv
        return self

    def stop(self, clean: bool = False) -> None:
        """Stop serving. ``clean=True`` sends Close(amqp:connection:forced) first;
        otherwise sockets are cut as if the process died."""
        with self._lock:
            srv = self._server
            if srv is None:
                return
            srv.stop(clean=clean)
            # Gauges die with the connections; the cumulative counts stay.
            self._counters.connections = 0
            self._counters.links = 0

    def restart(self) -> None:
        """Stop and start again on the same ports, with empty queues and routes."""
        self.stop()
        self._counters.totals["restarts"] += 1
        self.start()

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.running

    @property
    def ports(self) -> List[int]:
        return [p for _, p in self._bound]

    @property
    def port(self) -> int:
        return self._bound[0][1] if self._bound else 0

    @property
    def urls(self) -> List[str]:
        return ["amqp://%s:%d" % (("[%s]" % h) if ":" in h else h, p)
                for h, p in self._bound]

    @property
    def url(self) -> str:
        return self.urls[0] if self._bound else ""

    @property
    def listeners(self) -> List[Listener]:
        """The listeners, with the ports bound once started (copies)."""
        return [dataclasses.replace(lst) for lst in self._listeners]

    @property
    def counters(self) -> dict:
        srv = self._server
        if srv is None:
            return routing.snapshot(self._counters, None)
        return srv.call(srv.snapshot)

    def __enter__(self) -> "Intermediary":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self):
        return "<Intermediary %s %s>" % (self.mode, " ".join(self.urls) or "stopped")
