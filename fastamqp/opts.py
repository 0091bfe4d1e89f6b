"""The ``[oslo_messaging_amqp]`` options.

The 38 options of the original driver keep their names, types, defaults, minimums and
``deprecated_group='amqp1'`` aliases (REFERENCE §2), so existing configuration files and
``amqp://host?option=value`` URLs keep working. The help text is our own. Two deliberate
changes: ``addressing_mode`` and ``pre_settled`` reject unknown values with an error
naming the option (the original silently fell back to routable addressing, or logged and
ignored the value), and the new ``serializer`` option chooses the body format. One
default differs: ``pre_settled`` lists only ``rpc-reply`` (the original also listed
``rpc-cast``), so casts are confirmed (see its help and docs/migration.md).
"""
from oslo_config import cfg

from fastamqp.engine import policy
from fastamqp.exceptions import ConfigurationError

GROUP = "oslo_messaging_amqp"
DEPRECATED_GROUP = "amqp1"

ADDRESSING_MODES = ("legacy", "routable", "dynamic", "rabbitmq")
PRE_SETTLED_TYPES = ("rpc-call", "rpc-reply", "rpc-cast", "notify")
SERIALIZERS = ("json", "msgpack")


def _str(name, default, help, deprecated=True, **kw):
    return cfg.StrOpt(name, default=default, help=help,
                      deprecated_group=DEPRECATED_GROUP if deprecated else None, **kw)


def _int(name, default, minimum, help, deprecated=False):
    return cfg.IntOpt(name, default=default, min=minimum, help=help,
                      deprecated_group=DEPRECATED_GROUP if deprecated else None)


amqp1_opts = [
    # 1-3: identity and debugging
    _str("container_name", None,
         "AMQP container-id of this process; it must be unique across the whole "
         "messaging bus. Left unset, one is generated from the host name, the program "
         "name, the process id and a random UUID."),
    _int("idle_timeout", 0, None,
         "AMQP heartbeat: seconds of silence after which the peer considers this "
         "connection dead (sent as the Open idle-time-out). Empty frames keep a quiet "
         "connection alive; 0 turns heartbeats off.", deprecated=True),
    cfg.BoolOpt("trace", default=False, deprecated_group=DEPRECATED_GROUP,
                help="Log every AMQP frame sent and received (very verbose)."),

    # 4-9: TLS
    cfg.BoolOpt("ssl", default=False,
                help="Connect with TLS. With no other ssl_* option set, the server "
                     "certificate is checked against the system's trusted CAs."),
    _str("ssl_ca_file", "", "PEM file of the CA certificate(s) that must have signed "
         "the server's certificate."),
    _str("ssl_cert_file", "", "PEM file of this client's certificate, for TLS client "
         "authentication (and SASL EXTERNAL)."),
    _str("ssl_key_file", "", "PEM file of the private key of ssl_cert_file."),
    _str("ssl_key_password", None, "Password that decrypts ssl_key_file, if it is "
         "encrypted.", secret=True),
    cfg.BoolOpt("ssl_verify_vhost", default=False,
                help="Check the server certificate against the virtual host of the "
                     "transport URL instead of the DNS name of the host (for servers "
                     "that pick a certificate per virtual host with SNI)."),

    # 10-13: SASL
    _str("sasl_mechanisms", "", "Space-separated SASL mechanisms this client may use "
         "(e.g. 'PLAIN EXTERNAL'); empty allows whatever the SASL library offers."),
    _str("sasl_config_dir", "", "Directory holding the Cyrus SASL configuration file."),
    _str("sasl_config_name", "", "Name of the Cyrus SASL configuration file, without "
         "the .conf suffix."),
    _str("sasl_default_realm", "", "Realm appended to a user name from the transport "
         "URL that has none ('user' becomes 'user@realm').", deprecated=False),

    # 14-22: reconnection, retries and deadlines
    _int("connection_retry_interval", 1, 1,
         "Seconds to wait before the first reconnection attempt after the connection "
         "is lost."),
    _int("connection_retry_backoff", 2, 0,
         "Factor by which the wait grows after each failed reconnection attempt: the "
         "delay is MULTIPLIED by this value (1, 2, 4, 8 ... with the defaults), as the "
         "original driver did despite its help text, up to "
         "connection_retry_interval_max. 1 keeps the delay constant."),
    _int("connection_retry_interval_max", 30, 1,
         "Longest wait, in seconds, between reconnection attempts."),
    _int("link_retry_delay", 10, 1,
         "Seconds to wait before re-attaching a link the peer closed with an error, and "
         "before re-sending a message the peer released or modified."),
    _int("default_reply_retry", 0, -1,
         "How many times an RPC reply is re-sent after a recoverable failure; -1 "
         "retries until default_reply_timeout."),
    _int("default_reply_timeout", 30, 5,
         "Seconds an RPC server tries to deliver a reply before giving up."),
    _int("default_send_timeout", 30, 5,
         "Deadline in seconds for an RPC call or cast whose caller gave no timeout."),
    _int("default_notify_timeout", 30, 5,
         "Deadline in seconds for delivering a notification."),
    _int("default_sender_link_timeout", 600, 1,
         "Seconds a sender link may stay unused before it is detached."),

    # 23-34: addressing
    cfg.StrOpt("addressing_mode", default="dynamic",
               choices=[(m, d) for m, d in zip(ADDRESSING_MODES, (
                   "the flat addresses of brokers such as qpidd",
                   "the hierarchical addresses of router meshes such as qdrouterd",
                   "rabbitmq for RabbitMQ (Open property product = 'RabbitMQ'), "
                   "legacy for qpidd (product 'qpid-cpp', or none), routable for "
                   "every other peer; chosen again after every reconnection",
                   "RabbitMQ's queue and exchange addresses (/queue/..., "
                   "/exchange/amq.direct/... on 3.x; /queues/..., /exchanges/... on "
                   "4.x, chosen from the peer's version)"))],
               help="Address syntax of the messages and links this driver sends."),
    cfg.BoolOpt("pseudo_vhost", default=True,
                help="Put the transport URL's virtual host into every address, for "
                     "buses without virtual hosts. When false the virtual host is "
                     "sent as the Open hostname instead."),
    _str("server_request_prefix", "exclusive",
         "Legacy addressing: prefix of addresses for one specific server."),
    _str("broadcast_prefix", "broadcast",
         "Legacy addressing: prefix of fanout (all servers) addresses."),
    _str("group_request_prefix", "unicast",
         "Legacy addressing: prefix of addresses for any one server of a group."),
    _str("rpc_address_prefix", "openstack.org/om/rpc",
         "Routable addressing: prefix of every RPC address.", deprecated=False),
    _str("notify_address_prefix", "openstack.org/om/notify",
         "Routable addressing: prefix of every notification address.", deprecated=False),
    _str("multicast_address", "multicast",
         "Routable addressing: the tag of fanout addresses (every subscriber gets a "
         "copy).", deprecated=False),
    _str("unicast_address", "unicast",
         "Routable addressing: the tag of addresses for one specific server.",
         deprecated=False),
    _str("anycast_address", "anycast",
         "Routable addressing: the tag of addresses shared by competing consumers.",
         deprecated=False),
    _str("default_notification_exchange", None,
         "Exchange of notification addresses when the target names none; unset, the "
         "control_exchange is used, else 'notify'.", deprecated=False),
    _str("default_rpc_exchange", None,
         "Exchange of RPC addresses when the target names none; unset, the "
         "control_exchange is used, else 'rpc'.", deprecated=False),

    # 35-38: flow control and settlement
    _int("reply_link_credit", 200, 1,
         "Credit window of the link on which RPC replies arrive."),
    _int("rpc_server_credit", 100, 1,
         "Credit window of each RPC server link: messages received but not yet "
         "acknowledged, per link."),
    _int("notify_server_credit", 100, 1,
         "Credit window of each notification listener link."),
    # oslo.config cannot check the items of a MultiStrOpt default against choices, so
    # the values are checked by pre_settled() below.
    # The original's default was rpc-cast and rpc-reply: a router (qdrouterd) drops
    # pre-settled casts on a congested link and loses what it holds when it dies.
    # Casts and notifications not listed here are confirmed: unsettled, but their
    # callers do not wait for the acknowledgement (send_window).
    cfg.MultiStrOpt("pre_settled", default=["rpc-reply"],
                 help="Message types sent pre-settled: the peer does not acknowledge "
                      "them, so one lost on the way (a router drops pre-settled "
                      "messages on a congested link, and loses what it holds when it "
                      "dies) goes unnoticed. Casts and notifications not listed are "
                      "sent confirmed: the call returns as soon as the message is on "
                      "its way, and the driver keeps it until the peer acknowledges "
                      "it, sending it again when the peer releases it or the "
                      "connection drops. Calls wait for their reply either way. Any "
                      "of: " + ", ".join(PRE_SETTLED_TYPES) + "."),
]

# Options this driver adds to the original's.
fastamqp_opts = [
    cfg.StrOpt("serializer", default="json", choices=SERIALIZERS,
               help="Body format of the messages this driver sends: 'json' is what "
                    "the original driver wrote (an AMQP string of JSON text) and what "
                    "every peer reads; 'msgpack' is smaller and faster but only "
                    "fastamqp reads it. Received messages are read in either format."),
    cfg.IntOpt("send_window", default=policy.DEFAULT_SEND_WINDOW, min=1,
               help="How many confirmed casts and notifications (those not listed in "
                    "pre_settled) one connection holds until the peer acknowledges "
                    "them. While it is full, a cast or notification waits for room, "
                    "and fails at its deadline like any other send."),
    cfg.FloatOpt("cleanup_drain_timeout", default=10.0, min=0,
                 help="Seconds transport.cleanup() waits for the peer to acknowledge "
                      "the confirmed casts and notifications still held, before it "
                      "closes the connection and logs what it gave up on."),
    cfg.BoolOpt("notification_pools", default=False,
                help="Deliver notifications so that listener pools work "
                     "(get_notification_listener(..., pool=...)): notifiers send to "
                     "the topic's multicast address, and every consumer group -- each "
                     "pool, and the listeners without a pool as one more group -- "
                     "gets its own copy of every notification, shared among the "
                     "group's members. Set it alike on every notifier and listener of "
                     "the notifications. Needs a broker: qpidd (shared subscriptions; "
                     "a topic pattern for the multicast prefix) or RabbitMQ (group "
                     "queues declared over AMQP 0-9-1 on the same port). Off: the "
                     "original driver's layout (one queue per topic, listeners "
                     "compete) and a pool is refused."),
    # RabbitMQ 4.x: the queues fastamqp declares itself (fastamqp.addressing.rabbitmq), with the
    # rabbit driver's option meanings (docs/rabbitmq.md lists them side by side).
    cfg.BoolOpt("rabbit_quorum_queue", default=False,
                help="RabbitMQ 4.x: declare the shared queues (RPC topics and servers, "
                     "notifications, notification pools) as quorum queues, replicated "
                     "over the cluster, as the rabbit driver's option of the same name "
                     "does. The queues must not exist already as classic queues "
                     "(RabbitMQ refuses to redeclare a queue with another type: delete "
                     "them first). Reply and fanout queues stay classic."),
    cfg.IntOpt("rabbit_transient_queues_ttl", default=1800, min=1,
               help="RabbitMQ 4.x: seconds a reply or fanout queue (one per connection, "
                    "declared by fastamqp) lives on unused after its client is gone "
                    "(the queue argument x-expires), as the rabbit driver's option of "
                    "the same name."),
]

ALL_OPTS = amqp1_opts + fastamqp_opts


def pre_settled(group):
    """The message types to send pre-settled, checked: an unknown one is an error."""
    value = group.pre_settled
    # A MultiStrOpt given in the URL query (amqp://h?pre_settled=rpc-cast) or the
    # environment arrives as one string: "rpc-cast" or "rpc-cast,notify".
    if isinstance(value, str):
        value = [value]
    chosen = {part.strip() for item in value for part in item.split(",") if part.strip()}
    unknown = sorted(chosen.difference(PRE_SETTLED_TYPES))
    if unknown:
        raise ConfigurationError(
            f"[{GROUP}] pre_settled: unknown message type(s) {', '.join(unknown)}; "
            f"expected any of {', '.join(PRE_SETTLED_TYPES)}")
    return frozenset(chosen)


def register_opts(conf):
    conf.register_opts(ALL_OPTS, group=GROUP)


def list_opts():
    """Entry point for oslo-config-generator (``oslo.config.opts``)."""
    return [(GROUP, ALL_OPTS)]
