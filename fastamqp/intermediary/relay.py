"""``Relay``: the embedded intermediary's C data path ("fastamqp relay").

Same routing behaviour as ``Intermediary`` (routing.RouterCore / BrokerCore) for the
data path, in C on its own native thread (fastamqp/intermediary/fa_relay.c), at a fraction of
the CPU per message. What it does not do: fault hooks, SASL other than ANONYMOUS, TLS,
several listeners (docs/relay.md). Use ``Intermediary`` for those. Its address table is
routing.py's, built here and handed to the C side at start: the same ``addresses``,
``default_distribution``, ``queue_patterns`` and ``topic_patterns`` as ``Intermediary``.

    with Relay(mode="router") as r:
        transport_url = r.url
        ...
        print(r.counters)
"""
from __future__ import annotations

import os
import threading
from typing import Iterable, Optional, Tuple

from . import BROKER_PRODUCT, ROUTER_PRODUCT, _version, routing

# FASTAMQP_PUREPYTHON=1 at import time disables every C extension (as fastamqp.engine
# reads it); the relay is then unavailable even if built.
if os.environ.get("FASTAMQP_PUREPYTHON", "").strip().lower() in ("1", "true", "yes", "on"):
    _relay = None
else:
    try:
        from . import _relay
    except ImportError:   # pure-Python install, or not built
        _relay = None

__all__ = ["Relay", "available"]


def available() -> bool:
    """True if the C relay extension is built."""
    return _relay is not None


class Relay:
    """An in-process C AMQP 1.0 router (``mode="router"``) or broker (``"broker"``).

    The members shared with ``Intermediary``: ``mode``, ``product``, ``port``, ``url``,
    ``urls``, ``ports``, ``counters``, ``running``, ``start()``, ``stop()``, context
    manager. Counters: routing.COUNTER_NAMES plus connections_total, links_total and
    the gauges connections, links, stored (no per-address breakdown). ``window``,
    ``addresses``, ``default_distribution`` (router), ``queue_patterns`` and
    ``topic_patterns`` (broker): as ``Intermediary``'s.
    """

    def __init__(self, mode: str = "router", host: str = "127.0.0.1", port: int = 0,
                 product: Optional[str] = None, version: Optional[str] = None,
                 router_id: str = "fastamqp", container_id: Optional[str] = None,
                 window: int = routing.DEFAULT_WINDOW,
                 addresses: Optional[Iterable[Tuple[str, str]]] = None,
                 queue_patterns: Optional[Iterable[str]] = None,
                 topic_patterns: Optional[Iterable[str]] = None,
                 default_distribution: str = routing.BALANCED):
        if mode not in ("router", "broker"):
            raise ValueError("mode must be 'router' or 'broker'")
        if _relay is None:
            raise RuntimeError("the fastamqp relay (C extension "
                               "fastamqp.intermediary._relay) is not built")
        self.mode = mode
        self.host = host
        self._want_port = port
        self.product = product or (ROUTER_PRODUCT if mode == "router" else BROKER_PRODUCT)
        self.version = version or _version()
        self.router_id = router_id
        self.container_id = container_id or ("fastamqp-%s-%s" % (mode, router_id))
        self.window = window
        # routing.py's table, the one RouterCore / BrokerCore would use.
        if mode == "router":
            self.table = routing.router_table(addresses, default_distribution)
        else:
            self.table = routing.broker_table(queue_patterns, topic_patterns)
        self._core = None
        self._port = 0
        self._last = None
        self._lock = threading.Lock()

    def start(self) -> "Relay":
        with self._lock:
            if self._core is not None:
                return self
            # After a first start, restart on the port actually bound.
            core = _relay.RelayCore(self.mode, self.host, self._port or self._want_port,
                                    self.container_id, self.product, self.version,
                                    self.router_id, self.window,
                                    self.table.entries, self.table.default)
            self._port = core.start()
            self._core = core
        return self

    def stop(self, clean: bool = False) -> None:
        """Stop serving: sockets are cut (no AMQP Close), state is freed. ``clean`` is
        accepted for signature compatibility with Intermediary and ignored."""
        with self._lock:
            core, self._core = self._core, None
            if core is None:
                return
            core.stop()
            self._last = core.counters()

    def distribution(self, address: str) -> str:
        """The distribution the C side gives ``address`` from its table (the temporary
        addresses it made aside): compared with routing.py's by the tests."""
        core = self._core
        if core is None:
            raise RuntimeError("the relay is not running")
        return core.distribution(address)

    @property
    def running(self) -> bool:
        return self._core is not None and self._core.alive()

    @property
    def port(self) -> int:
        return self._port

    @property
    def ports(self):
        return [self._port] if self._port else []

    @property
    def urls(self):
        h = ("[%s]" % self.host) if ":" in self.host else self.host
        return ["amqp://%s:%d/" % (h, self._port)] if self._port else []

    @property
    def url(self) -> str:
        return self.urls[0] if self._port else ""

    @property
    def counters(self) -> dict:
        core = self._core
        if core is not None:
            return core.counters()
        if self._last is not None:
            return dict(self._last)
        return dict.fromkeys(_relay.COUNTER_NAMES, 0)

    def __enter__(self) -> "Relay":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self):
        return "<Relay %s %s>" % (self.mode, self.url or "stopped")
