"""What every addressing syntax shares: the options that shape addresses, the
Addresser interface, and how a router is told from a broker (REFERENCE §3.3)."""
import dataclasses

from fastamqp.engine.interface import Source

SERVICE_RPC = "rpc"
SERVICE_NOTIFY = "notify"

# What qpidd calls itself; also assumed when the peer names no product.
BROKER_PRODUCT = "qpid-cpp"


@dataclasses.dataclass(frozen=True)
class AddressingConfig:
    """The options that shape addresses ([oslo_messaging_amqp] plus control_exchange)."""

    mode: str = "dynamic"
    default_exchange: str = None          # [DEFAULT] control_exchange
    server_request_prefix: str = "exclusive"
    broadcast_prefix: str = "broadcast"
    group_request_prefix: str = "unicast"
    rpc_address_prefix: str = "openstack.org/om/rpc"
    notify_address_prefix: str = "openstack.org/om/notify"
    multicast_address: str = "multicast"
    unicast_address: str = "unicast"
    anycast_address: str = "anycast"
    default_rpc_exchange: str = None
    default_notification_exchange: str = None

    @classmethod
    def from_conf(cls, group, default_exchange):
        """From the [oslo_messaging_amqp] option group."""
        names = [f.name for f in dataclasses.fields(cls)
                 if f.name not in ("mode", "default_exchange")]
        return cls(mode=group.addressing_mode, default_exchange=default_exchange,
                   **{name: getattr(group, name) for name in names})


def _join(separator, parts):
    # Empty parts (no vhost, no exchange, no server) vanish, separators and all.
    return separator.join(part for part in parts if part)


class Addresser:
    """Builds the address strings of one syntax."""

    syntax = None
    # Whether messages must say durable = false in their header (the codecs'
    # non_durable): a peer that takes a message without it as durable (RabbitMQ 4).
    non_durable = False

    def resolve(self, target, service=SERVICE_RPC):
        """The address a message to ``target`` is sent to: fanout, else a specific
        server, else any server of the topic."""
        if target.fanout:
            return self.multicast_address(target, service)
        if target.server:
            return self.unicast_address(target, service)
        return self.anycast_address(target, service)

    def server_addresses(self, target, service=SERVICE_RPC, token=None):
        """The three addresses an RPC server listening on ``target`` subscribes to.
        ``token`` names queues of one connection's own where the syntax has them
        (fastamqp.rabbitmq)."""
        return [self.unicast_address(target, service),
                self.multicast_address(target, service),
                self.anycast_address(target, service)]

    # ---- queues the client declares itself (RabbitMQ: fastamqp.rabbitmq) -----------
    def server_queues(self, target, token, service=SERVICE_RPC):
        """The queues to declare before an RPC server on ``target`` subscribes:
        none, unless the peer needs clients to declare them."""
        return []

    def notification_queues(self, targets, pool=None, pools=False):
        """The queues to declare for notification listeners (and notifiers)."""
        return []

    def notification_source(self, target):
        """What a notification listener without pools consumes from."""
        return self.resolve(target, SERVICE_NOTIFY)

    def reply_to(self, address):
        """The reply-to of requests whose replies arrive on source ``address``."""
        return address

    def heartbeat_payload(self, payload):
        """A call-monitor heartbeat (a message without a body) as this peer takes
        it: unchanged, unless the peer needs a body (fastamqp.rabbitmq)."""
        return payload

    # ---- notification pools (the module docstring) --------------------------------
    def notification_topic(self, target):
        """Where a notifier sends when pools are on."""
        return self.multicast_address(target, SERVICE_NOTIFY)

    def notification_group(self, target, pool):
        """What a listener in ``pool`` (None: no pool) consumes from when pools are
        on: a shared subscription to the notification topic."""
        topic = self.notification_topic(target)
        return Source(topic, group_name(topic, pool))


def group_name(topic, pool):
    """The name of a consumer group's subscription to a notification topic."""
    return f"{topic}#{pool or ''}"


ROUTER_PRODUCTS = ("qpid-dispatch-router", "skupper-router")


def is_router(peer_properties):
    """Whether the peer is a router, which gives a link credit only while the address
    has a consumer: no credit on a fanout's link then means nobody listens. (A broker
    withholding credit is flow control: its fanouts wait.)"""
    return (peer_properties or {}).get("product") in ROUTER_PRODUCTS
