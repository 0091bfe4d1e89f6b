"""Routing and queueing logic of the embedded intermediary, free of any Proton object.

The AMQP side (server.py) turns wire events into calls on a core (``RouterCore`` or
``BrokerCore``) and executes what the core asks of it through a small port (``Wire``):
put these bytes on that consumer link, settle that producer delivery with this outcome.
Keeping the decisions here lets the future C fast path be checked against the same
behaviour, and lets the rules be unit-tested without sockets.

Vocabulary, from the intermediary's point of view:
  producer  a link on which a client sends to us (our receiving end);
  consumer  a link on which we send to a client (our sending end);
  origin    the server's handle for the producer's delivery, opaque here.
"""
from __future__ import annotations

import collections
import itertools
import uuid
from typing import Dict, Iterable, List, Optional, Protocol, Tuple

CLOSEST = "closest"
BALANCED = "balanced"
MULTICAST = "multicast"
QUEUE = "queue"
TOPIC = "topic"
ANYCAST = (CLOSEST, BALANCED)

# qdrouterd's linkCapacity default (src/connection_manager.c): a producer's credit
# window and, in router mode, the depth of a consumer's undelivered list at which the
# router discards pre-settled deliveries; also used as the broker's producer window.
DEFAULT_WINDOW = 250

# The seed's qdrouterd.conf address blocks (legacy and routable syntax).
ROUTER_ADDRESSES: List[Tuple[str, str]] = [
    ("unicast", CLOSEST),
    ("exclusive", CLOSEST),
    ("broadcast", MULTICAST),
    ("openstack.org/om/rpc/multicast", MULTICAST),
    ("openstack.org/om/rpc/unicast", CLOSEST),
    ("openstack.org/om/rpc/anycast", BALANCED),
    ("openstack.org/om/notify/multicast", MULTICAST),
    ("openstack.org/om/notify/unicast", CLOSEST),
    ("openstack.org/om/notify/anycast", BALANCED),
]
BROKER_QUEUE_PATTERNS = ["exclusive", "unicast"]
# "broadcast" is the seed's qpidd.conf; the routable multicast prefixes are what a
# qpidd behind routable addressing needs for fanout and for notification pools.
BROKER_TOPIC_PATTERNS = ["broadcast", "openstack.org/om/rpc/multicast",
                         "openstack.org/om/notify/multicast"]

OUTCOMES = ("accepted", "released", "modified", "rejected")


def normalize(address: Optional[str]) -> Optional[str]:
    """One key per node: qdrouterd accepts ``amqp:/_topo/...`` and ``_topo/...`` alike."""
    if address is None:
        return None
    if address.startswith("amqp:/") and not address.startswith("amqp://"):
        return address[len("amqp:/"):]
    return address


def prefix_matches(prefix: str, address: str) -> bool:
    # Token boundary, so that prefix "unicast" does not capture "unicastfoo"; both
    # legacy ('.') and routable ('/') separators count.
    if not address.startswith(prefix):
        return False
    return len(address) == len(prefix) or prefix == "" or address[len(prefix)] in "./" \
        or prefix[-1] in "./"


class AddressTable:
    """Longest-prefix match of an address to a distribution."""

    def __init__(self, entries: Iterable[Tuple[str, str]], default: str):
        self.entries = sorted(entries, key=lambda e: len(e[0]), reverse=True)
        self.default = default

    def lookup(self, address: str) -> str:
        for prefix, dist in self.entries:
            if prefix_matches(prefix, address):
                return dist
        return self.default


def router_table(addresses: Optional[Iterable[Tuple[str, str]]] = None,
                 default: str = BALANCED) -> AddressTable:
    """RouterCore's address table; the C relay is handed the same one (relay.py)."""
    return AddressTable(ROUTER_ADDRESSES if addresses is None else addresses, default)


def broker_table(queue_patterns: Optional[Iterable[str]] = None,
                 topic_patterns: Optional[Iterable[str]] = None) -> AddressTable:
    """BrokerCore's address table; the C relay is handed the same one (relay.py).

    Addresses matching neither pattern are treated as queues (auto-created): the driver
    only uses pattern addresses with qpidd, and a queue is the safer guess for anything
    else because it never loses a message sent before the consumer attaches (qpidd
    itself would refuse an unknown node)."""
    qp = BROKER_QUEUE_PATTERNS if queue_patterns is None else queue_patterns
    tp = BROKER_TOPIC_PATTERNS if topic_patterns is None else topic_patterns
    return AddressTable([(x, QUEUE) for x in qp] + [(x, TOPIC) for x in tp], QUEUE)


class Outcome:
    """A terminal delivery state, as plain data so both sides can carry it."""
    __slots__ = ("kind", "failed", "undeliverable", "condition", "annotations")

    def __init__(self, kind: str, failed: bool = False, undeliverable: bool = False,
                 condition: Optional[Tuple[str, Optional[str]]] = None,
                 annotations: Optional[dict] = None):
        if kind not in OUTCOMES:
            raise ValueError("unknown outcome %r" % (kind,))
        self.kind = kind
        self.failed = failed
        self.undeliverable = undeliverable
        self.condition = condition
        self.annotations = annotations

    def __repr__(self):
        return "Outcome(%s%s)" % (self.kind, ", failed" if self.failed else "")


ACCEPTED = Outcome("accepted")
RELEASED = Outcome("released")
# What qdrouterd 1.19 answers for a delivery its consumer had but did not settle when
# the consumer's link or connection went away (checked side by side: modified,
# delivery-failed): the consumer may have acted on it.
CONSUMER_GONE = Outcome("modified", failed=True)


class Message:
    """One delivery in transit; ``data`` is the encoded message, never decoded."""
    __slots__ = ("data", "settled", "origin", "producer", "address")

    def __init__(self, data: bytes, settled: bool, origin=None, producer=None,
                 address: Optional[str] = None):
        self.data = data
        self.settled = settled
        self.origin = origin
        self.producer = producer
        self.address = address


class Producer:
    __slots__ = ("id", "address", "dist", "held", "closed", "ref")

    def __init__(self, address: str, ref=None):
        self.id = next(_ids)
        self.address = address
        self.dist = None
        # Our unsettled deliveries the intermediary has not settled yet: they hold
        # credit (router) as in qdrouterd, which replenishes a producer's credit when
        # its delivery is settled end to end, and at once for a pre-settled one.
        self.held = 0
        self.closed = False
        self.ref = ref         # server's handle


class Consumer:
    __slots__ = ("id", "address", "dist", "credit", "presettled", "undelivered",
                 "unsettled", "closed", "ref", "queue", "temporary", "shared_name",
                 "keep")

    def __init__(self, address: Optional[str], presettled: bool = False, ref=None,
                 shared_name: Optional[str] = None, keep: bool = False):
        self.id = next(_ids)
        # Broker, topic addresses: a shared subscription named by the link (the
        # source had the "shared" capability), and whether its queue outlives its
        # last consumer (source expiry policy "never").
        self.shared_name = shared_name
        self.keep = keep
        self.address = address
        self.dist = None
        self.credit = 0        # kept equal to the link's credit by the server
        self.presettled = presettled
        self.undelivered: collections.deque = collections.deque()   # router
        self.unsettled: Dict[object, Message] = {}
        self.closed = False
        self.ref = ref
        self.queue = None      # broker: the Queue this consumer reads
        self.temporary = False


_ids = itertools.count(1)


class Wire(Protocol):
    """What a core needs from the AMQP side."""

    def transmit(self, consumer: Consumer, data: bytes, settled: bool) -> object:
        """Send on the consumer link; return a key for the outcome (ignored if settled)."""

    def settle(self, origin, outcome: Outcome) -> None:
        """Settle the producer's delivery ``origin`` with ``outcome``."""


class FaultRules:
    """Test-time overrides, by plain address prefix ("" matches everything)."""

    def __init__(self):
        self.refuse: Dict[str, Tuple[str, str]] = {}
        self.outcome: Dict[str, Outcome] = {}
        self.withhold: set = set()

    @staticmethod
    def _first(rules, address):
        if address is None:
            return None
        for prefix in sorted(rules, key=len, reverse=True):
            if address.startswith(prefix):
                return prefix
        return None

    def refusal(self, address):
        p = self._first(self.refuse, address)
        return None if p is None else self.refuse[p]

    def forced_outcome(self, address) -> Optional[Outcome]:
        p = self._first(self.outcome, address)
        return None if p is None else self.outcome[p]

    def withheld(self, address) -> bool:
        return self._first(self.withhold, address) is not None


# received/forwarded: deliveries in from producers / out to consumers (each multicast
# copy counts); accepted..rejected: outcomes the intermediary gave producers; dropped:
# discarded unseen; broker only: enqueued, requeued (released, modified or in flight to a
# consumer that left), acknowledged (consumer accepted); router only: dropped_presettled,
# qdrouterd's droppedPresettledDeliveries (qdstat -g "Dropped presettled deliveries"):
# pre-settled deliveries discarded for want of a consumer, for a congested consumer
# link, or with a consumer that left (in router mode every drop is one of these).
COUNTER_NAMES = ("received", "forwarded", "accepted", "released", "modified", "rejected",
                 "dropped", "enqueued", "requeued", "acknowledged", "dropped_presettled")


class Counters:
    """Cumulative counts; gauges (stored, connections, links) are added at snapshot."""

    def __init__(self):
        self.totals = dict.fromkeys(COUNTER_NAMES, 0)
        self.totals.update(connections_total=0, links_total=0, restarts=0)
        self.connections = 0
        self.links = 0
        self.per_address: Dict[str, Dict[str, int]] = {}

    def bump(self, address: Optional[str], name: str, n: int = 1) -> None:
        self.totals[name] += n
        if address is not None:
            entry = self.per_address.get(address)
            if entry is None:
                entry = self.per_address[address] = dict.fromkeys(COUNTER_NAMES, 0)
            entry[name] += n

    def outcome(self, address, outcome: Outcome) -> None:
        self.bump(address, outcome.kind)


class _Core:
    def __init__(self, wire: Wire, counters: Counters, faults: FaultRules,
                 window: int = DEFAULT_WINDOW):
        self.wire = wire
        self.counters = counters
        self.faults = faults
        self.window = window
        # Producers whose credit may need topping up; the server drains this set.
        self.dirty: set = set()
        self.producers: Dict[str, set] = collections.defaultdict(set)

    def take_dirty(self) -> List[Producer]:
        d, self.dirty = self.dirty, set()
        return [p for p in d if not p.closed]

    def _dirty_address(self, address):
        self.dirty.update(self.producers.get(address, ()))

    def attach_producer(self, p: Producer) -> None:
        self.producers[p.address].add(p)
        self.dirty.add(p)

    def detach_producer(self, p: Producer) -> None:
        p.closed = True
        s = self.producers.get(p.address)
        if s is not None:
            s.discard(p)
            if not s:
                del self.producers[p.address]

    def _settle(self, m: Message, outcome: Outcome) -> None:
        """Settle the producer's delivery, unless it was pre-settled or its link is gone."""
        if m.settled or m.origin is None:
            return
        origin, m.origin = m.origin, None
        p = m.producer
        if p is not None:
            p.held -= 1
            self.dirty.add(p)
            if p.closed:
                return
        self.counters.outcome(m.address, outcome)
        self.wire.settle(origin, outcome)

    def _drop(self, m: Message) -> None:
        self.counters.bump(m.address, "dropped")

    def deliver(self, p: Producer, m: Message) -> None:
        m.producer = p
        m.address = p.address
        self.counters.bump(p.address, "received")
        if not m.settled:
            p.held += 1
        # A pre-settled delivery's credit comes back once it is routed (or dropped).
        self.dirty.add(p)
        forced = self.faults.forced_outcome(p.address)
        if forced is not None:
            if m.settled:
                self._drop(m)
            else:
                self._settle(m, forced)
            return
        self._route(p, m)

    def _send(self, c: Consumer, m: Message, settled: bool):
        key = self.wire.transmit(c, m.data, settled)
        c.credit -= 1
        self.counters.bump(c.address, "forwarded")
        return key


class RouterCore(_Core):
    """qdrouterd-like: nothing stored beyond a per-link buffer, outcomes end to end."""

    mode = "router"

    def __init__(self, wire, counters, faults, addresses=None, default=BALANCED,
                 router_id="fastamqp", window=DEFAULT_WINDOW):
        super().__init__(wire, counters, faults, window)
        self.table = router_table(addresses, default)
        self.router_id = router_id
        self.consumers: Dict[str, List[Consumer]] = {}
        self.rr: Dict[str, int] = collections.defaultdict(int)
        self.temps: set = set()

    def distribution(self, address: str) -> str:
        # Router-assigned temporary addresses belong to exactly one receiver.
        if address in self.temps:
            return CLOSEST
        return self.table.lookup(address)

    def dynamic_address(self) -> str:
        addr = "amqp:/_topo/0/%s/temp.%s" % (self.router_id, uuid.uuid4().hex[:12])
        self.temps.add(normalize(addr))
        return addr

    # -- attach / detach ---------------------------------------------------------

    def attach_producer(self, p: Producer) -> None:
        p.dist = self.distribution(p.address)
        super().attach_producer(p)

    def attach_consumer(self, c: Consumer) -> None:
        c.dist = self.distribution(c.address)
        lst = self.consumers.setdefault(c.address, [])
        lst.append(c)
        if len(lst) == 1:
            # DISPATCH-1012 / -1481: the address just became reachable.
            self._dirty_address(c.address)

    def detach_consumer(self, c: Consumer) -> None:
        if c.closed:
            return
        c.closed = True
        lst = self.consumers.get(c.address)
        if lst is not None and c in lst:
            lst.remove(c)
            if not lst:
                del self.consumers[c.address]
                self.temps.discard(c.address)
        # Nothing is stored in a router: what this consumer held goes back to its
        # producers (released if they wait for an outcome, else lost).
        while c.undelivered:
            m = c.undelivered.popleft()
            if m.settled:
                self._drop(m)
            else:
                self._settle(m, RELEASED)         # it never reached the consumer
        for m in c.unsettled.values():
            self._settle(m, CONSUMER_GONE)
        c.unsettled.clear()
        self._dirty_address(c.address)

    def _drop(self, m: Message) -> None:
        # Every message a router drops is pre-settled (an unsettled one is released).
        super()._drop(m)
        self.counters.bump(m.address, "dropped_presettled")

    # -- credit ------------------------------------------------------------------

    def desired_credit(self, p: Producer) -> int:
        if p.closed or self.faults.withheld(p.address):
            return 0
        if not self.consumers.get(p.address):
            # Anycast: DISPATCH-1012; multicast: DISPATCH-1481.
            return 0
        return max(0, self.window - p.held)

    # -- forwarding --------------------------------------------------------------

    def _choose(self, address: str, dist: str) -> Consumer:
        lst = self.consumers[address]
        n = len(lst)
        start = self.rr[address] % n
        if dist == BALANCED:
            best, best_load = None, None
            for i in range(n):
                c = lst[(start + i) % n]
                load = len(c.undelivered) + len(c.unsettled)
                if best is None or load < best_load:
                    best, best_load = c, load
                    if load == 0:
                        break
            chosen = best
        else:
            # One router, so every local receiver is equally close; qdrouterd
            # rotates among them.
            chosen = lst[start]
        self.rr[address] = lst.index(chosen) + 1
        return chosen

    def _route(self, p: Producer, m: Message) -> None:
        consumers = self.consumers.get(p.address)
        if not consumers:
            if m.settled:
                self._drop(m)
            else:
                self._settle(m, RELEASED)
            return
        if p.dist == MULTICAST:
            # Forwarded pre-settled to every consumer; the router answers the
            # producer itself.
            self._settle(m, ACCEPTED)
            for c in list(consumers):
                self._enqueue(c, Message(m.data, True, None, None, m.address))
            return
        self._enqueue(self._choose(p.address, p.dist), m)

    def _enqueue(self, c: Consumer, m: Message) -> None:
        # qdrouterd (src/router_core/forwarder.c, qdr_forward_deliver_CT): a
        # pre-settled delivery arriving at an outgoing link whose undelivered list (what
        # waits for the consumer's credit) holds linkCapacity or more first discards
        # every pre-settled delivery on that list but its head, which may be partly
        # written (qdr_forward_drop_presettled_CT_LH). Unsettled ones stay: they hold
        # their producer's credit, so they are bounded by the producers' windows.
        if m.settled and len(c.undelivered) >= self.window:
            head = c.undelivered.popleft()
            kept = collections.deque([head])
            for old in c.undelivered:
                if old.settled:
                    self._drop(old)
                else:
                    kept.append(old)
            c.undelivered = kept
        c.undelivered.append(m)
        self.pump(c)

    def pump(self, c: Consumer) -> None:
        while c.credit > 0 and c.undelivered and not c.closed:
            m = c.undelivered.popleft()
            settled = m.settled or c.presettled or c.dist == MULTICAST
            key = self._send(c, m, settled)
            if not settled:
                c.unsettled[key] = m
            elif not m.settled:
                # The consumer asked for pre-settled deliveries: the router takes the
                # message off the producer's hands.
                self._settle(m, ACCEPTED)

    def consumer_flow(self, c: Consumer) -> None:
        self.pump(c)

    def consumer_outcome(self, c: Consumer, key, outcome: Outcome) -> None:
        m = c.unsettled.pop(key, None)
        if m is None:
            return
        self._settle(m, outcome)

    def stored(self) -> Dict[str, int]:
        out: Dict[str, int] = collections.Counter()
        for addr, lst in self.consumers.items():
            for c in lst:
                if c.undelivered:
                    out[addr] += len(c.undelivered)
        return dict(out)


class Queue:
    __slots__ = ("name", "messages", "consumers", "rr", "temporary", "subscription")

    def __init__(self, name: str, temporary: bool = False, subscription: bool = False):
        self.name = name
        self.messages: collections.deque = collections.deque()
        self.consumers: List[Consumer] = []
        self.rr = 0
        self.temporary = temporary
        self.subscription = subscription


class BrokerCore(_Core):
    """qpidd-like: queues created on demand, topics fan out, settlement at the broker."""

    mode = "broker"

    def __init__(self, wire, counters, faults, queue_patterns=None, topic_patterns=None,
                 window=DEFAULT_WINDOW):
        super().__init__(wire, counters, faults, window)
        self.table = broker_table(queue_patterns, topic_patterns)
        self.queues: Dict[str, Queue] = {}
        self.topics: Dict[str, List[Queue]] = {}
        self.shared: Dict[str, Queue] = {}     # shared subscriptions by link name

    def distribution(self, address: str) -> str:
        if address in self.queues:
            return QUEUE
        return self.table.lookup(address)

    def dynamic_address(self) -> str:
        # qpidd names temporary queues with a fresh UUID.
        name = str(uuid.uuid4())
        self.queues[name] = Queue(name, temporary=True)
        return name

    def _queue(self, name: str) -> Queue:
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = Queue(name)
        return q

    def attach_producer(self, p: Producer) -> None:
        p.dist = self.distribution(p.address)
        if p.dist == QUEUE:
            self._queue(p.address)
        super().attach_producer(p)

    def attach_consumer(self, c: Consumer) -> None:
        c.dist = self.distribution(c.address)
        if c.dist == TOPIC and c.shared_name is not None:
            # qpidd: a source with the "shared" capability consumes from the
            # subscription queue named after the link name alone, made by the first
            # such link; later links of that name compete on it.
            q = self.shared.get(c.shared_name)
            if q is None:
                q = self.shared[c.shared_name] = Queue(
                    c.address, temporary=not c.keep, subscription=True)
                self.topics.setdefault(c.address, []).append(q)
        elif c.dist == TOPIC:
            # A private subscription queue per subscriber, like qpidd's exchange
            # bindings; it dies with the link.
            q = Queue(c.address, temporary=True, subscription=True)
            self.topics.setdefault(c.address, []).append(q)
        else:
            q = self._queue(c.address)
        c.queue = q
        q.consumers.append(c)
        self.pump(q)

    def detach_consumer(self, c: Consumer) -> None:
        if c.closed:
            return
        c.closed = True
        q = c.queue
        if q is None:
            return
        if c in q.consumers:
            q.consumers.remove(c)
        # In-flight messages go back to the head, in their original order.
        for m in reversed(list(c.unsettled.values())):
            q.messages.appendleft(m)
            self.counters.bump(q.name, "requeued")
        c.unsettled.clear()
        if q.temporary and not q.consumers:
            if q.messages:
                self.counters.bump(q.name, "dropped", len(q.messages))
            q.messages.clear()
            if q.subscription:
                subs = self.topics.get(q.name, [])
                if q in subs:
                    subs.remove(q)
                if not subs:
                    self.topics.pop(q.name, None)
                if c.shared_name is not None and self.shared.get(c.shared_name) is q:
                    del self.shared[c.shared_name]
            elif self.queues.get(q.name) is q:
                del self.queues[q.name]
        else:
            self.pump(q)

    def desired_credit(self, p: Producer) -> int:
        if p.closed or self.faults.withheld(p.address):
            return 0
        return self.window

    def _route(self, p: Producer, m: Message) -> None:
        if p.dist == TOPIC:
            subs = self.topics.get(p.address, [])
            if not subs:
                self._drop(m)
            for q in subs:
                q.messages.append(Message(m.data, True, None, None, m.address))
                self.counters.bump(m.address, "enqueued")
            self._settle(m, ACCEPTED)
            for q in list(subs):
                self.pump(q)
        else:
            q = self.queues.get(p.address) or self._queue(p.address)
            self._settle(m, ACCEPTED)
            # The broker owns the message now; forget the producer's delivery.
            q.messages.append(Message(m.data, True, None, None, m.address))
            self.counters.bump(m.address, "enqueued")
            self.pump(q)
        self.dirty.add(p)

    def pump(self, q: Queue) -> None:
        n = len(q.consumers)
        while q.messages and n:
            sent = False
            for i in range(n):
                c = q.consumers[(q.rr + i) % n]
                if c.credit > 0 and not c.closed:
                    q.rr = (q.rr + i + 1) % n
                    m = q.messages.popleft()
                    key = self._send(c, m, c.presettled)
                    if not c.presettled:
                        c.unsettled[key] = m
                    sent = True
                    break
            if not sent:
                return

    def consumer_flow(self, c: Consumer) -> None:
        if c.queue is not None:
            self.pump(c.queue)

    def consumer_outcome(self, c: Consumer, key, outcome: Outcome) -> None:
        m = c.unsettled.pop(key, None)
        if m is None:
            return
        q = c.queue
        if outcome.kind == "accepted":
            self.counters.bump(m.address, "acknowledged")
        if outcome.kind in ("released", "modified"):
            q.messages.appendleft(m)
            self.counters.bump(m.address, "requeued")
            self.pump(q)
        elif outcome.kind == "rejected":
            # qpidd would route to an alternate exchange if one were configured.
            self._drop(m)

    def stored(self) -> Dict[str, int]:
        out: Dict[str, int] = collections.Counter()
        for q in self.queues.values():
            if q.messages:
                out[q.name] += len(q.messages)
        for name, subs in self.topics.items():
            for q in subs:
                if q.messages:
                    out[name] += len(q.messages)
        return dict(out)


def snapshot(counters: Counters, core: Optional[_Core]) -> dict:
    """A plain dict: cumulative counts, live gauges, and the same per address."""
    out = dict(counters.totals)
    out["connections"] = counters.connections
    out["links"] = counters.links
    stored = core.stored() if core is not None else {}
    out["stored"] = sum(stored.values())
    addrs = {a: dict(v, stored=0) for a, v in counters.per_address.items()}
    for a, n in stored.items():
        addrs.setdefault(a, dict.fromkeys(COUNTER_NAMES, 0))
        addrs[a]["stored"] = n
    out["addresses"] = addrs
    # Broker: the shared subscriptions (notification consumer groups), by link name.
    out["shared_subscriptions"] = {
        name: {"address": q.name, "consumers": len(q.consumers),
               "stored": len(q.messages)}
        for name, q in getattr(core, "shared", {}).items()}
    return out
