"""The oslo.messaging driver: ``transport_url = amqp://...`` (entry point ``amqp``).

This layer speaks oslo.messaging on one side and the engine interface
(fastamqp.engine.interface) plus the codec on the other; it never touches Proton or pyngus.
It maps oslo's Target to addresses (fastamqp.addressing), chosen per connection from the
peer's product, and engine errors to oslo exceptions (REFERENCE §3.7):

* the caller gave a timeout and it passed: MessagingTimeout;
* a driver default deadline passed, the peer refused, or retries ran out:
  MessageDeliveryFailure; with ``transport_options.at_least_once``, a message no
  consumer took (released), or one the peer gave no credit for within
  AT_LEAST_ONCE_CREDIT_WAIT (a router with no consumer), raises MessageUndeliverable.

Notification pools need the notification_pools option (NotificationPoolsUnsupported).
"""
import logging
import os
import platform
import random
import sys
import threading
import time
import uuid
import weakref

import oslo_messaging
from oslo_messaging import exceptions as om_exceptions
from oslo_messaging._drivers import base
from oslo_messaging._drivers import common

from fastamqp import addressing
from fastamqp import codec
from fastamqp import engine
from fastamqp import exceptions
from fastamqp import opts
from fastamqp.engine import policy
from fastamqp.addressing import rabbitmq
from fastamqp.rabbitmq import declare
from fastamqp.engine.interface import ConnectionSettings, Host, Outcome

LOG = logging.getLogger(__name__)

# How long a heartbeat (call monitor keepalive) may take to go out: it is best effort,
# and must never hold up the server's dispatch thread for long.
HEARTBEAT_SEND_TIMEOUT = 5.0

# How long a send with ``transport_options.at_least_once`` waits for the peer to give
# its link credit before it is reported as MessageUndeliverable (never longer than the
# caller's own deadline). A router (qdrouterd) grants credit only while a consumer of
# the address exists, and does so one round trip after the link attaches, or within
# about a second of route propagation in a mesh; so no credit after 5 s means "no
# consumer", which the rabbit driver reports at once (mandatory flag) rather than
# after the whole RPC timeout (60 s by default).
AT_LEAST_ONCE_CREDIT_WAIT = 5.0

# How long listen() waits for a first connection to RabbitMQ, so that a refused
# declaration (a missing permission) fails the listen naming the cause; when the
# broker is just not there yet, the listener is made all the same and the queues
# are declared once it is.
LISTEN_DECLARE_WAIT = 5.0


class NotificationPoolsUnsupported(om_exceptions.ConfigurationError,
                                   NotImplementedError):
    """``get_notification_listener(..., pool=...)`` without the ``notification_pools``
    option.

    A pool needs the intermediary to keep one copy of every notification per consumer
    group and to share each copy among the group's members. The original layout
    cannot: a notification goes to one queue (qpidd ``queue-patterns``) or one
    ``balanced`` address (qdrouterd), which gives one copy in total. With
    ``notification_pools = true`` notifiers send to a topic instead and each group
    consumes from a shared subscription to it (fastamqp.addressing): qpidd shares a
    subscription queue among links with the ``shared`` source capability and one link
    name; on RabbitMQ each group is a queue bound to the topic's exchange. qdrouterd
    stores nothing and has no per-group distribution, so through a router the notify
    prefix must be link-routed to such a broker. Refusing is better than delivering
    duplicates inside a pool, or nothing to it. It is a NotImplementedError as well,
    as oslo.messaging's driver API asks for unsupported pools.
    """


# Forks seen by this process: a child's count differs from its parent's, so a driver
# can tell cheaply that its connection (and I/O thread) belongs to another process.
_forks = 0


def _count_fork():
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_count_fork)


def _hosts(url, realm):
    hosts = []
    for h in url.hosts or []:
        username = h.username
        if username and realm and "@" not in username:
            username = f"{username}@{realm}"
        hosts.append(Host(h.hostname or "localhost", h.port or 5672, username,
                          h.password))
    if not hosts:
        hosts = [Host()]
    # The original driver started at a random host, spreading clients over a mesh.
    start = random.randrange(len(hosts))
    return hosts[start:] + hosts[:start]


def _container_name():
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return (f"openstack.org/om/container/{platform.node()}/{program}/{os.getpid()}/"
            f"{uuid.uuid4().hex}")


class IncomingMessage(base.RpcIncomingMessage):
    """A request or notification a listener received, until acknowledged."""

    def __init__(self, listener, decoded, delivery):
        super().__init__(decoded.context, decoded.request, msg_id=decoded.message_id)
        self._listener = listener
        self._delivery = delivery
        self._reply_to = decoded.reply_to
        self._correlation_id = decoded.message_id
        self.client_timeout = decoded.call_monitor_timeout

    def acknowledge(self):
        self._listener.settle(self._delivery, Outcome.ACCEPTED)

    def requeue(self):
        self._listener.settle(self._delivery, Outcome.RELEASED)

    def heartbeat(self):
        if not self._reply_to:
            LOG.warning("cannot send a call-monitor heartbeat: the call has no reply-to")
            return
        driver = self._listener.driver
        try:
            conn = driver.connection()
            addresser = driver._addresser(conn.peer)
            payload = addresser.heartbeat_payload(
                codec.encode_heartbeat(self._reply_to, self._correlation_id,
                                       self.client_timeout,
                                       non_durable=addresser.non_durable))
            conn.send(self._reply_to, payload, presettled=True,
                      deadline=time.monotonic() + HEARTBEAT_SEND_TIMEOUT, retry=0)
        except Exception as exc:  # oslo: heartbeat() must not raise
            LOG.debug("call-monitor heartbeat to %s failed: %s", self._reply_to, exc)

    def reply(self, reply=None, failure=None):
        if not self._reply_to:
            LOG.debug("not replying: the request has no reply-to address")
            return
        driver = self._listener.driver
        try:
            # oslo passes failure as a sys.exc_info() tuple (rpc/server.py).
            failure_text = common.serialize_remote_exception(failure) if failure else None
            conn = driver.connection()
            payload = codec.encode_reply(self._reply_to, self._correlation_id,
                                         response=reply, failure=failure_text,
                                         serializer=driver.serializer,
                                         non_durable=driver._addresser(conn.peer)
                                         .non_durable)
            conn.send(
                self._reply_to, payload, presettled="rpc-reply" in driver.pre_settled,
                deadline=time.monotonic() + driver.options.default_reply_timeout,
                retry=driver.options.default_reply_retry)
        except Exception as exc:  # oslo: reply() must not raise
            LOG.warning("RPC reply to %s failed: %s", self._reply_to, exc)


class Listener(base.PollStyleListener):
    """An engine subscription seen as an oslo poll-style listener."""

    def __init__(self, driver, subscription, prefetch_size=-1, connection=None,
                 on_detach=None):
        super().__init__(prefetch_size)
        self.driver = driver
        self._subscription = subscription
        self._halted = threading.Event()     # oslo called stop() or cleanup()
        self._connection = connection        # a connection of its own, if any
        self._on_detach = on_detach

    @base.batch_poll_helper
    def poll(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            batch = self._subscription.poll(1, left)
            if not batch:
                left = None if deadline is None else deadline - time.monotonic()
                if not self._halted.is_set() and (left is None or left > 0):
                    # The engine stopped the subscription under a running listener
                    # (its connection was closed, or its I/O thread died): an empty
                    # answer before the deadline would make oslo's poll loop spin a
                    # core. Nothing more can arrive; wait for stop() or the deadline.
                    self._halted.wait(left)
                return None
            delivery = batch[0]
            try:
                decoded = codec.decode(delivery.payload)
                if decoded.kind != codec.REQUEST:
                    raise exceptions.CodecError(f"a {decoded.kind} is not a request")
            except exceptions.CodecError as exc:
                # A poison message must not stop the listener (REFERENCE §3.9 #9):
                # refuse it so the peer does not redeliver it, and go on.
                LOG.error("rejecting a malformed message on %s: %s", delivery.address, exc)
                self._subscription.settle(delivery, Outcome.REJECTED)
                continue
            return IncomingMessage(self, decoded, delivery)

    def settle(self, delivery, outcome):
        self._subscription.settle(delivery, outcome)

    def stop(self):
        # Detach the links: a stopped server must not hold messages or credit
        # (REFERENCE §3.9 #4).
        self._halted.set()
        self._detach()

    def cleanup(self):
        self._halted.set()
        self._detach()
        if self._connection is not None:
            self._connection.close()

    def _detach(self):
        self._subscription.close()
        on_detach, self._on_detach = self._on_detach, None
        if on_detach is not None:
            on_detach()


class _OptionValues:
    """An option group whose values are read once each. oslo.config's lookup (through
    ConfigOptsProxy, for the URL query) costs about 2 µs, and every send reads a
    timeout; none of these options is mutable at run time."""

    def __init__(self, group):
        self._group = group

    def __getattr__(self, name):
        value = getattr(self._group, name)
        setattr(self, name, value)      # found on the instance from now on
        return value


class ProtonDriver(base.BaseDriver):
    """oslo.messaging's ``amqp://`` driver (see the module docstring)."""

    def __init__(self, conf, url, default_exchange=None, allowed_remote_exmods=None):
        opts.register_opts(conf)
        super().__init__(conf, url, default_exchange, allowed_remote_exmods)
        # Options in the URL query override the configuration (amqp://h?ssl=1).
        self.options = _OptionValues(
            common.ConfigOptsProxy(conf, url, opts.GROUP)[opts.GROUP])
        self.pre_settled = opts.pre_settled(self.options)
        self.serializer = self.options.serializer
        self._addressing = addressing.AddressingConfig.from_conf(self.options,
                                                                 default_exchange)
        self._vhost = url.virtual_host if self.options.pseudo_vhost else None
        self._hosts = _hosts(url, self.options.sasl_default_realm)
        self._url = url
        self._lock = threading.Lock()
        self._connection = None
        self._pid = None
        self._forks = None          # _forks when the connection was made
        # The last peer and its addresser. The peer itself is kept, not its id(): a
        # new PeerInfo after a failover could be given the freed one's id.
        self._addresser_for = (None, None)
        # Notification consumer groups with a shared-subscription link on the
        # connection, as (exchange, topic, pool): a link name may be used once per
        # connection, so a second listener of a group gets a connection of its own.
        self._group_links = set()
        # RabbitMQ: what each engine connection declares (fastamqp.rabbitmq.declare.Declarer).
        self._declarers = weakref.WeakKeyDictionary()
        self._queue_options = rabbitmq.QueueOptions(
            quorum=self.options.rabbit_quorum_queue,
            transient_ttl=self.options.rabbit_transient_queues_ttl)

    # ---- the connection, made on first use and again after a fork -------------
    def connection(self):
        conn = self._connection
        if conn is not None and self._forks == _forks:
            return conn            # every send asks: no lock, no getpid()
        with self._lock:
            if self._connection is not None and self._pid != os.getpid():
                # The parent's I/O thread does not exist in this child: start over.
                LOG.warning("process forked after the connection was made; "
                            "opening a new one in the child")
                self._connection = None
            if self._connection is None:
                self._connection = self._new_connection()
                self._pid = os.getpid()
                self._forks = _forks
                self._group_links = set()
            return self._connection

    def _new_connection(self):
        """A started engine connection for this transport's URL and options."""
        declarer = declare.Declarer(self._addresser, self._queue_options,
                                     declare.ReplySource(self._addressing))
        settings = self._connection_settings(declarer)
        declarer.settings = settings
        connection = engine.Connection(self._hosts, settings)
        self._declarers[connection] = declarer
        connection.start()
        return connection

    def _connection_settings(self, declarer=None):
        """Made afresh for each connection: its reply queue name (RabbitMQ) and the
        pid in its Open properties are its own."""
        conf = self.options
        return ConnectionSettings(
            container_id=conf.container_name or _container_name(),
            properties={"process": os.path.basename(sys.argv[0] or "python"),
                        "pid": os.getpid(), "node": platform.node()},
            virtual_host=None if conf.pseudo_vhost else self._url.virtual_host,
            idle_timeout=conf.idle_timeout,
            retry_interval=conf.connection_retry_interval,
            retry_backoff=conf.connection_retry_backoff,
            retry_interval_max=conf.connection_retry_interval_max,
            link_retry_delay=conf.link_retry_delay,
            sender_link_timeout=conf.default_sender_link_timeout,
            reply_link_credit=conf.reply_link_credit,
            send_window=conf.send_window,
            # A named reply queue of this connection's own on RabbitMQ (no dynamic
            # sources on 3.x and 4.0); dynamic elsewhere. On RabbitMQ 4 the queues
            # the links name are declared first (fastamqp.addressing.rabbitmq).
            reply_source=declarer.reply_source if declarer else None,
            prepare=declarer.prepare if declarer else None,
            trace=conf.trace,
            sasl_mechanisms=conf.sasl_mechanisms,
            sasl_config_dir=conf.sasl_config_dir or None,
            sasl_config_name=conf.sasl_config_name or None,
            ssl=conf.ssl,
            ssl_ca_file=conf.ssl_ca_file or None,
            ssl_cert_file=conf.ssl_cert_file or None,
            ssl_key_file=conf.ssl_key_file or None,
            ssl_key_password=conf.ssl_key_password,
            # Verify the certificate against the virtual host instead of the
            # host name (per-vhost certificates with SNI), as the original did.
            ssl_peer_name=(self._url.virtual_host if conf.ssl_verify_vhost
                           else None) or None)

    def _addresser(self, peer):
        last, addresser = self._addresser_for
        if addresser is None or last is not peer:
            addresser = addressing.choose_addresser(
                self._addressing, peer.properties if peer else {}, self._vhost)
            self._addresser_for = (peer, addresser)
        return addresser

    def _active_connection(self, deadline, timeout_given):
        conn = self.connection()
        try:
            conn.wait_active(max(0.0, deadline - time.monotonic()))
        except exceptions.AuthenticationError as exc:
            raise om_exceptions.MessageDeliveryFailure(str(exc)) from None
        except exceptions.ConnectionFailed as exc:
            raise self._timeout_error(timeout_given, f"no connection: {exc}") from None
        return conn

    @staticmethod
    def _timeout_error(timeout_given, text):
        if timeout_given:
            return oslo_messaging.MessagingTimeout(text)
        return om_exceptions.MessageDeliveryFailure(text)

    def require_features(self, requeue=False):
        # Requeue is supported: IncomingMessage.requeue() settles RELEASED, and the
        # peer redelivers (REFERENCE §3.6). No other feature flag exists.
        pass

    # ---- sending --------------------------------------------------------------
    def send(self, target, ctxt, message, wait_for_reply=False, timeout=None,
             call_monitor_timeout=None, retry=None, transport_options=None):
        timeout_given = bool(timeout)
        deadline = time.monotonic() + (timeout or self.options.default_send_timeout)
        conn = self._active_connection(deadline, timeout_given)
        addresser = self._addresser(conn.peer)
        address = addresser.resolve(target, addressing.SERVICE_RPC)
        at_least_once = bool(transport_options and transport_options.at_least_once)
        budget = None if retry is None or retry < 0 else retry
        released = 0                 # resends after the peer released the request
        while True:
            waiter = None
            try:
                if wait_for_reply:
                    reply_to = self._addresser(conn.peer).reply_to(
                        conn.reply_address(deadline))
                    message_id = codec.new_message_id()
                    waiter = conn.expect_reply(message_id)
                    payload = codec.encode_request(
                        address, message, ctxt, message_id=message_id,
                        reply_to=reply_to, timeout=timeout,
                        call_monitor_timeout=call_monitor_timeout,
                        serializer=self.serializer, non_durable=addresser.non_durable)
                    presettled = "rpc-call" in self.pre_settled
                else:
                    payload = codec.encode_request(address, message, ctxt,
                                                   timeout=timeout,
                                                   serializer=self.serializer,
                                                   non_durable=addresser.non_durable)
                    presettled = "rpc-cast" in self.pre_settled
                result = self._send_once(conn, address, payload, presettled, deadline,
                                         retry, at_least_once, wait_for_reply, target)
                if result is not None and result.outcome is not Outcome.ACCEPTED:
                    self._resend(result, address, released, budget, deadline,
                                 at_least_once, target, timeout_given)
                    released += 1
                    budget = None if budget is None else budget - 1
                    continue
                if not wait_for_reply:
                    return None
                reply = codec.decode(waiter.wait(deadline, call_monitor_timeout))
            except exceptions.CallMonitorTimeout as exc:
                raise oslo_messaging.MessagingTimeout(str(exc)) from None
            except (exceptions.SendTimeout, exceptions.ReplyTimeout) as exc:
                raise self._timeout_error(timeout_given, f"{address}: {exc}") from None
            except (exceptions.SendFailure, exceptions.ConnectionFailed,
                    exceptions.EngineClosed) as exc:
                raise om_exceptions.MessageDeliveryFailure(f"{address}: {exc}") from None
            except exceptions.CodecError as exc:
                raise om_exceptions.MessageDeliveryFailure(
                    f"malformed reply from {address}: {exc}") from None
            finally:
                if waiter is not None:
                    waiter.cancel()
            if reply.failure:
                raise common.deserialize_remote_exception(reply.failure,
                                                          self._allowed_remote_exmods)
            return reply.response

    def _send_once(self, conn, address, payload, presettled, deadline, retry,
                   at_least_once, wait_for_reply, target):
        """One conn.send(); None when a call's request went out but its outcome is
        still unknown (the reply decides)."""
        # A call's request is not resent by the engine once it may have reached the
        # server (in doubt at a connection loss): its reply route is gone with the
        # connection anyway, and a resend could run the method twice. Casts are
        # (at least once, REFERENCE §3.9 #8).
        in_doubt_resend = not wait_for_reply
        if not at_least_once:
            # A cast not sent pre-settled is confirmed: the engine keeps it until the
            # peer settles it (interface.Connection.send); a call waits for its reply.
            # A fanout through a router with nobody listening is dropped, not an
            # error (interface.Connection.send, addressing.is_router).
            fanout = bool(target.fanout) and addressing.is_router(
                conn.peer.properties if conn.peer else None)
            return conn.send(address, payload, presettled=presettled, deadline=deadline,
                             retry=retry, in_doubt_resend=in_doubt_resend,
                             confirm=not wait_for_reply, fanout=fanout)
        # at_least_once: no credit within AT_LEAST_ONCE_CREDIT_WAIT means no consumer.
        short = min(deadline, time.monotonic() + AT_LEAST_ONCE_CREDIT_WAIT)
        try:
            return conn.send(address, payload, presettled=presettled, deadline=short,
                             retry=retry, in_doubt_resend=in_doubt_resend)
        except exceptions.SendTimeout as exc:
            if exc.no_credit:
                raise oslo_messaging.MessageUndeliverable(
                    om_exceptions.MessageDeliveryFailure(
                        f"{address}: no consumer (the peer gave no credit): {exc}"),
                    target.exchange, target.topic, None) from None
            if wait_for_reply and short < deadline:
                # Credit came, so the request is out (or queued for the next credit);
                # only its outcome is late. Its reply still counts until the deadline.
                return None
            raise

    def _resend(self, result, address, attempt, budget, deadline, at_least_once, target,
                timeout_given):
        """Pause before a message the peer did not accept goes again, or raise
        (REFERENCE §3.6). A released (or plainly modified) message never reached a
        consumer, so sending it again cannot run anything twice: it goes again after
        a short pause that grows (fastamqp.engine.policy) for as long as its deadline and
        retry budget allow. A router releases requests while a route is down (a mesh
        neighbour restarting): the call then waits the flap out, as the original
        driver's did, instead of failing at the first release."""
        retryable = result.outcome is Outcome.RELEASED or (
            result.outcome is Outcome.MODIFIED and not result.delivery_failed
            and not result.undeliverable_here)
        if retryable and at_least_once:
            # No consumer took it: that is exactly what at_least_once reports.
            raise oslo_messaging.MessageUndeliverable(
                om_exceptions.MessageDeliveryFailure(f"{address}: no consumer took it"),
                target.exchange, target.topic, None)
        if not retryable or (budget is not None and budget <= 0):
            raise om_exceptions.MessageDeliveryFailure(
                f"{address}: the peer answered {result.outcome.value}"
                + (f" ({result.condition}: {result.description})" if result.condition
                   else "")
                + ("" if not retryable else ", and the retries are spent"))
        left = deadline - time.monotonic()
        time.sleep(max(0.0, min(policy.released_pause(attempt,
                                                      self.options.link_retry_delay),
                                left)))
        if time.monotonic() >= deadline:
            raise self._timeout_error(
                timeout_given, f"{address}: the peer {result.outcome.value} the message "
                f"each time it was sent, until the deadline (no consumer reachable)")

    def send_notification(self, target, ctxt, message, version, retry=None):
        deadline = time.monotonic() + self.options.default_notify_timeout
        conn = self._active_connection(deadline, False)
        addresser = self._addresser(conn.peer)
        if self.options.notification_pools:
            address = addresser.notification_topic(target)
        else:
            address = addresser.resolve(target, addressing.SERVICE_NOTIFY)
        # RabbitMQ: the group without a pool (or on 4.x the topic's queue) exists
        # before the first notification, as the rabbit driver declares its queue.
        self._declare_for_notifier(conn, target, address)
        payload = codec.encode_notification(address, message, ctxt, version,
                                            serializer=self.serializer,
                                            non_durable=addresser.non_durable)
        budget = None if retry is None or retry < 0 else retry
        presettled = "notify" in self.pre_settled
        released = 0
        while True:
            try:
                # Confirmed unless pre-settled: the engine keeps the notification
                # until the peer settles it (interface.Connection.send).
                result = conn.send(address, payload, presettled=presettled,
                                   deadline=deadline, retry=retry, confirm=True)
            except (exceptions.SendTimeout, exceptions.SendFailure,
                    exceptions.ConnectionFailed, exceptions.EngineClosed) as exc:
                raise om_exceptions.MessageDeliveryFailure(f"{address}: {exc}") from None
            if result.outcome is Outcome.ACCEPTED:
                return
            # Released / modified: sent again, as casts are (REFERENCE §3.6);
            # rejected: a failure.
            self._resend(result, address, released, budget, deadline, False, target,
                         False)
            released += 1
            budget = None if budget is None else budget - 1

    # ---- listening ------------------------------------------------------------
    def listen(self, target, batch_size, batch_timeout):
        conn = self.connection()
        plan = declare.QueuePlan(lambda addresser, token: addresser.server_queues(
            target, token, addressing.SERVICE_RPC))

        def addresses(peer):
            return self._addresser(peer).server_addresses(
                target, addressing.SERVICE_RPC, token=plan.token(peer))
        subscription, release = self._subscribe(conn, plan, addresses,
                                                self.options.rpc_server_credit)
        return base.PollStyleListenerAdapter(
            Listener(self, subscription, on_detach=release), batch_size, batch_timeout)

    def _subscribe(self, conn, plan, addresses, credit):
        """conn.subscribe(), with ``plan``'s queues declared before the links attach
        (RabbitMQ): now for the current peer from this thread, and by the engine's
        prepare step on every later connection. A refusal fails the listen, naming
        the cause. Returns the subscription and what undoes the plan."""
        declarer = self._declarers.get(conn)
        if declarer is None:
            return conn.subscribe(addresses, credit), None
        declarer.add(plan)
        try:
            if conn.peer is None:
                # A first connection: its prepare step declares the plan, and says
                # why if the broker refuses (every host refusing is raised at once).
                try:
                    conn.wait_active(LISTEN_DECLARE_WAIT)
                except exceptions.DeclarationError:
                    raise
                except exceptions.ConnectionFailed:
                    pass
            declarer.ensure(conn.peer, plan)
        except exceptions.DeclarationError as exc:
            if exc.refused:
                declarer.discard(plan)
                raise om_exceptions.MessagingException(str(exc)) from None
            # Not reachable now: the engine's prepare step declares them when it is.
            LOG.warning("%s", exc)
        return conn.subscribe(addresses, credit), lambda: declarer.discard(plan)

    def listen_for_notifications(self, targets_and_priorities, pool, batch_size,
                                 batch_timeout):
        pools = self.options.notification_pools
        if pool is not None and not pools:
            raise NotificationPoolsUnsupported(
                f"notification pool {pool!r}: set [{opts.GROUP}] notification_pools = "
                "true on every notifier and listener of these notifications (it needs "
                "a broker: see fastamqp.driver.NotificationPoolsUnsupported)")
        # Target.exchange is honoured (the original discarded it: REFERENCE §3.9 #3).
        topics = [oslo_messaging.Target(topic=f"{t.topic}.{priority}",
                                        exchange=t.exchange)
                  for t, priority in targets_and_priorities]
        conn = self.connection()
        plan = declare.QueuePlan(lambda addresser, token: addresser.notification_queues(
            topics, pool, pools))
        if not pools:
            def addresses(peer):
                addresser = self._addresser(peer)
                return [addresser.notification_source(t) for t in topics]
            subscription, release = self._subscribe(conn, plan, addresses,
                                                    self.options.notify_server_credit)
            return base.PollStyleListenerAdapter(
                Listener(self, subscription, on_detach=release), batch_size,
                batch_timeout)

        default = (self._addressing.default_notification_exchange
                   or self._addressing.default_exchange)
        groups = {(t.exchange or default, t.topic, pool) for t in topics}
        with self._lock:
            shared = not groups.isdisjoint(self._group_links)
            if not shared:
                self._group_links |= groups
        own = self._new_connection() if shared else None

        def sources(peer):
            # On RabbitMQ the group queues are declared again on every connection
            # (the Declarer): a restarted 3.x broker has lost them (not durable).
            addresser = self._addresser(peer)
            return [addresser.notification_group(t, pool) for t in topics]
        try:
            subscription, undeclare = self._subscribe(
                own or conn, plan, sources, self.options.notify_server_credit)
        except Exception:
            if not shared:
                with self._lock:
                    self._group_links -= groups
            if own is not None:
                own.close()
            raise

        def release():
            if undeclare is not None:
                undeclare()
            if not shared:
                with self._lock:
                    self._group_links -= groups
        listener = Listener(self, subscription, connection=own, on_detach=release)
        return base.PollStyleListenerAdapter(listener, batch_size, batch_timeout)

    def _declare_for_notifier(self, conn, target, address):
        """RabbitMQ: the queue a notification to ``target`` (sent to ``address``) is
        kept in until a listener takes it -- with pools the group without a pool, on
        4.x the topic's queue -- declared once per connection
        (fastamqp.rabbitmq.declare.Declarer). A failure fails the send, naming the queue and
        the cause."""
        declarer = self._declarers.get(conn)
        if declarer is None:
            return
        pools = self.options.notification_pools
        plan = declare.QueuePlan(lambda addresser, token: addresser.notification_queues(
            [target], None, pools))
        try:
            declarer.ensure(conn.peer, plan, key=address)
        except exceptions.DeclarationError as exc:
            raise om_exceptions.MessageDeliveryFailure(str(exc)) from None

    def statistics(self):
        """What this transport's connection did with confirmed casts and
        notifications and with fanouts (fastamqp.engine.interface.Connection.statistics):
        held (in flight now), window, waiting_for_room, settled, resent_released,
        resent_after_loss, possibly_duplicated, rejected, given_up, fanout_dropped.
        Empty before the first send."""
        conn = self._connection
        return conn.statistics() if conn is not None else {}

    def cleanup(self):
        with self._lock:
            conn, self._connection = self._connection, None
        if conn is not None and self._pid == os.getpid():
            # Confirmed casts and notifications the callers think are sent: give the
            # peer time to settle them before the connection goes.
            conn.close(drain=self.options.cleanup_drain_timeout)
