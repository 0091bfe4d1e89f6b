"""RabbitMQ: its addresses, and the queues fastamqp declares on it.

RabbitMQ does not route arbitrary address strings (qdrouterd) or create a queue per
pattern (qpidd): an address names a queue, or an exchange plus a routing key. Two
generations, told apart by the peer's Open ``version`` property:

* 3.x, the ``rabbitmq_amqp1_0`` plugin ("v1" addresses; only ``%2F`` is unescaped):
    ``/queue/Q``        target: declare queue Q (if missing) and publish to it;
                        source: declare Q and consume from it (competing consumers)
    ``/exchange/X/K``   target: publish to exchange X with routing key K;
                        source: declare a server-named queue (``amq.gen-...``), bind
                        it to X with K and consume from it: each link its own copy
* 4.x, native AMQP 1.0 ("v2" addresses, each part percent-encoded, RFC 3986):
    ``/queues/Q`` and ``/exchanges/X/K``. Nothing is declared for a link, and a link
    to a missing queue is refused by ending the whole session (every link of it), so
    fastamqp declares what it uses itself, through the broker's AMQP 1.0 management
    node (fastamqp.rabbitmq.management), before the links attach (:class:`Declarer`).

The names are the routable addresses of fastamqp.addressing (so rpc_address_prefix,
notify_address_prefix, the multicast/unicast/anycast tags and the exchanges all apply):

    RPC to a topic (anycast)  queue openstack.org/om/rpc/anycast/openstack/compute
    RPC to one server         queue openstack.org/om/rpc/unicast/openstack/compute/host1
    RPC fanout                amq.direct, key
                                    openstack.org/om/rpc/multicast/openstack/compute
    notification              queue
                              openstack.org/om/notify/anycast/openstack/notifications.info

On 3.x messages go to the queues (``/queue/Q``, which declares them), fanout to
``amq.direct`` (each server's ``/exchange`` link gets a private queue bound to it).

On 4.x every message goes to ``amq.direct`` (``/exchanges/amq.direct/<name>``), never
to a queue address: a target that names a missing queue would end the sender's session
(a reply to a client that has gone, a cast to a server that never ran), while an
exchange always exists and answers ``released`` for a message no queue is bound for.
Each queue fastamqp declares is bound to amq.direct with its own name; an RPC server's
fanout queue, one per server and connection, with the multicast name. Shared queues
(anycast, per server, notifications, notification pools) are durable, classic or
quorum (option rabbit_quorum_queue); a connection's own queues (replies, fanout) are
auto-delete and expire when unused (rabbit_transient_queues_ttl, x-expires).

Notification pools (option ``notification_pools``): RabbitMQ ignores the ``shared``
source capability (each ``/exchange`` receiver gets a private queue), so a consumer
group is a queue of its own, ``<topic name>#<pool>``, bound to amq.direct with the
topic name as routing key; the notifier publishes to amq.direct with that key. AMQP 1.0
can neither declare nor bind such a queue on 3.x, so fastamqp does it over AMQP 0-9-1
on the same port with the same credentials (:func:`declare_groups`); on 4.x through the
management node like every other queue.

Replies: RabbitMQ 3.x has no dynamic sources, so each connection consumes from a named
queue of its own, ``fastamqp-reply.<uuid>`` (:class:`ReplySource`). The 3.x plugin
declares every queue non-exclusive and not auto-delete (whatever the link asks), so
these queues and the ``amq.gen-`` fanout queues outlive their client unless the
operator gives them an expiry policy (TRANSIENT_QUEUE_PATTERN, docs/rabbitmq.md). On
4.x fastamqp declares the reply queue itself (auto-delete, x-expires), a new one on
every connection, and its requests name ``/exchanges/amq.direct/<reply queue>`` as
reply-to, so a late reply to a client that has gone is released, never a session end.

Declarations never run on an engine's I/O thread: the engines call
``ConnectionSettings.prepare`` (:meth:`Declarer.prepare`) from a thread of their own
once the peer's Open has arrived and attach no link before it returns; a listener
declares its queues from the caller's thread before it subscribes, a notifier before
its first notification to a topic on each connection.
"""
import collections
import dataclasses
import functools
import logging
import re
from urllib.parse import quote

from fastamqp.addressing.amqp import RoutableAddresser
from fastamqp.addressing.base import SERVICE_NOTIFY, SERVICE_RPC, Addresser, group_name

LOG = logging.getLogger(__name__)

PRODUCT = "rabbitmq"                  # the Open property product, compared caseless
MODE = "rabbitmq"                     # the addressing_mode value that forces it

FANOUT_EXCHANGE = "amq.direct"
REPLY_QUEUE_PREFIX = "fastamqp-reply."
# The queues that must not outlive their client: for an operator policy with "expires".
TRANSIENT_QUEUE_PATTERN = r"^(fastamqp-reply\.|amq\.gen-)"
GROUP_EXCHANGE = "amq.direct"         # notification pools (module docstring)
DIRECT_EXCHANGE = "amq.direct"        # 4.x: where every message is sent
# An AMQP 1.0 data section (descriptor 0x75) holding zero bytes.
EMPTY_DATA_SECTION = b"\x00\x53\x75\xa0\x00"
DECLARE_TIMEOUT = 10.0

# A notification consumer group's queue and how it is bound.
GroupBinding = collections.namedtuple("GroupBinding", "queue exchange key")


def is_rabbitmq(peer_properties):
    """Whether the peer's Open properties say RabbitMQ."""
    product = (peer_properties or {}).get("product")
    return isinstance(product, str) and product.strip().lower() == PRODUCT


def major_version(peer_properties):
    """The peer's major version from its Open ``version`` property, or None."""
    version = (peer_properties or {}).get("version")
    match = re.match(r"\s*(\d+)", version) if isinstance(version, str) else None
    return int(match.group(1)) if match else None


def uses_v2(peer_properties):
    """RabbitMQ 4 and later: native AMQP 1.0 with v2 addresses."""
    major = major_version(peer_properties)
    return major is not None and major >= 4


def wanted(config, peer_properties):
    """Whether RabbitMQ addressing applies: forced by the mode, or ``dynamic`` mode
    and a peer that says it is RabbitMQ."""
    return config.mode == MODE or (config.mode == "dynamic"
                                   and is_rabbitmq(peer_properties))


# ---- the two address syntaxes -------------------------------------------------------
def v1_queue(name):
    # The 3.x plugin splits addresses on "/" and unescapes only "%2F".
    return "/queue/" + name.replace("/", "%2F")


def v1_exchange(exchange, key):
    return f"/exchange/{exchange.replace('/', '%2F')}/{key.replace('/', '%2F')}"


@functools.lru_cache(maxsize=4096)
def v2_queue(name):
    return "/queues/" + quote(name, safe="")


# Cached: every message's address goes through it (quote() costs ~5 us a name).
@functools.lru_cache(maxsize=4096)
def v2_exchange(exchange, key):
    return f"/exchanges/{quote(exchange, safe='')}/{quote(key, safe='')}"


@dataclasses.dataclass(frozen=True)
class QueueSpec:
    """A queue fastamqp declares, and its bindings ((exchange, key), ...).

    ``transient``: a queue of one connection's own (replies, an RPC server's fanout
    queue): auto-delete, and it expires when unused. Otherwise shared by every client of
    a topic (QueueOptions decide its type)."""

    name: str
    transient: bool = False
    bindings: tuple = ()


@dataclasses.dataclass(frozen=True)
class QueueOptions:
    """How declared queues are made (the rabbit driver's option names, opts.py)."""

    quorum: bool = False                 # rabbit_quorum_queue: shared queues
    transient_ttl: int = 1800            # rabbit_transient_queues_ttl, seconds

    def declaration(self, spec):
        """The management node's queue properties for ``spec`` (4.x)."""
        if spec.transient:
            # Durable all the same: RabbitMQ 4 deprecates non-durable, non-exclusive
            # queues (transient_nonexcl_queues), and exclusive would tie the queue to
            # the management connection that declared it.
            return {"durable": True, "exclusive": False, "auto_delete": True,
                    "arguments": {"x-queue-type": "classic",
                                  "x-expires": int(self.transient_ttl * 1000)}}
        return {"durable": True, "exclusive": False, "auto_delete": False,
                "arguments": {"x-queue-type": "quorum" if self.quorum else "classic"}}


def _bound(name, key=None):
    return ((DIRECT_EXCHANGE, name if key is None else key),)


class RabbitMQAddresser(Addresser):
    """RabbitMQ queue and exchange addresses (module docstring); ``version`` 2 for
    RabbitMQ 4.x, 1 for 3.x (and when the peer gives no version)."""

    syntax = "rabbitmq"

    def __init__(self, config, vhost=None, version=1):
        self._names = RoutableAddresser(config, vhost)
        self.version = version
        # RabbitMQ 4.0 and 4.1 write a message to disk unless its header says
        # durable = false explicitly (fastamqp.message.mark_non_durable). The rabbit
        # driver's messages never reach the disk by default either (its queues are
        # not durable without amqp_durable_queues); quorum queues keep every message.
        self.non_durable = version >= 2
        if version >= 2:
            self._queue, self._exchange = v2_queue, v2_exchange
        else:
            self._queue, self._exchange = v1_queue, v1_exchange

    @classmethod
    def for_peer(cls, config, peer_properties, vhost=None):
        return cls(config, vhost, version=2 if uses_v2(peer_properties) else 1)

    def _target(self, name):
        """Where a message for queue ``name`` goes (module docstring)."""
        if self.version >= 2:
            return v2_exchange(DIRECT_EXCHANGE, name)
        return v1_queue(name)

    def multicast_address(self, target, service=SERVICE_RPC):
        return self._exchange(FANOUT_EXCHANGE,
                              self._names.multicast_address(target, service))

    def unicast_address(self, target, service=SERVICE_RPC):
        return self._target(self._names.unicast_address(target, service))

    def anycast_address(self, target, service=SERVICE_RPC):
        return self._target(self._names.anycast_address(target, service))

    # ---- RPC servers ----------------------------------------------------------------
    def server_queues(self, target, token, service=SERVICE_RPC):
        """4.x: the queues of an RPC server on ``target`` -- its own, a fanout queue
        of this connection's own (``token``), the topic's shared one. 3.x: none (the
        plugin declares what a link names)."""
        if self.version < 2:
            return []
        names = self._names
        multicast = names.multicast_address(target, service)
        fanout = f"{multicast}/{target.server}" if target.server else multicast
        return [QueueSpec(names.unicast_address(target, service),
                          bindings=_bound(names.unicast_address(target, service))),
                QueueSpec(f"{fanout}.{token}", transient=True,
                          bindings=_bound(None, multicast)),
                QueueSpec(names.anycast_address(target, service),
                          bindings=_bound(names.anycast_address(target, service)))]

    def server_addresses(self, target, service=SERVICE_RPC, token=None):
        """v1: the server's queue, the exchange address itself for fanout (the plugin
        makes the link a private queue bound to it) and the shared queue. v2: sources
        must be queues, so the three queues of server_queues()."""
        if self.version >= 2:
            return [self._queue(q.name) for q in self.server_queues(target, token,
                                                                    service)]
        return [self._queue(self._names.unicast_address(target, service)),
                self.multicast_address(target, service),
                self._queue(self._names.anycast_address(target, service))]

    # ---- notifications ----------------------------------------------------------------
    def notification_queues(self, targets, pool=None, pools=False):
        """The queues notification listeners of ``targets`` (and their notifiers)
        need: with pools, each group's queue (3.x: declared over AMQP 0-9-1); without,
        on 4.x, each topic's shared queue."""
        if pools:
            return [self.group_queue(t, pool) for t in targets]
        if self.version < 2:
            return []
        names = [self._names.anycast_address(t, SERVICE_NOTIFY)
                 for t in targets]
        return [QueueSpec(name, bindings=_bound(name)) for name in names]

    def notification_source(self, target):
        return self._queue(self._names.anycast_address(target, SERVICE_NOTIFY))

    # ---- notification pools (module docstring) ------------------------------------
    def group_binding(self, target, pool):
        key = self._names.multicast_address(target, SERVICE_NOTIFY)
        return GroupBinding(group_name(key, pool), GROUP_EXCHANGE, key)

    def group_queue(self, target, pool):
        binding = self.group_binding(target, pool)
        return QueueSpec(binding.queue, bindings=((binding.exchange, binding.key),))

    def notification_topic(self, target):
        binding = self.group_binding(target, None)
        return self._exchange(binding.exchange, binding.key)

    def notification_group(self, target, pool):
        return self._queue(self.group_binding(target, pool).queue)

    # ---- replies ---------------------------------------------------------------------
    def heartbeat_payload(self, payload):
        """4.x: RabbitMQ 4.0 fails a message without a body section by ending the
        sender's session (function_clause in mc_amqp), so a heartbeat carries an empty
        data section, which both engines read as a heartbeat (as from 3.x, which adds
        one itself)."""
        if self.version >= 2:
            return payload + EMPTY_DATA_SECTION
        return payload

    def reply_to(self, address):
        """4.x: the reply-to for replies arriving on queue ``address`` (ReplySource):
        through amq.direct, to which the reply queue is bound with its name."""
        if self.version >= 2 and address.startswith("/queues/" + REPLY_QUEUE_PREFIX):
            return f"/exchanges/{DIRECT_EXCHANGE}/{address[len('/queues/'):]}"
        return address
