"""RabbitMQ 4's AMQP 1.0 management node: declaring queues and bindings over AMQP 1.0.

RabbitMQ 4 (native AMQP 1.0) creates nothing for a v2 address: a queue must exist
before a link can use it. Clients declare queues, exchanges and bindings through the
broker's management node, which it announces with the connection capability
``LINK_PAIR_V1_0``. The protocol is HTTP-like requests over a pair of links:

* a sender with target ``/management`` and a receiver with source ``/management``, both
  with one link name and the link property ``paired = true``, and the sender settling
  its messages (``snd-settle-mode = settled``);
* a request is a message with ``message-id``, ``to`` = the resource path (v2 syntax,
  each segment percent-encoded: ``/queues/NAME``, ``/exchanges/NAME``, ``/bindings``),
  ``subject`` = the HTTP method, ``reply-to = "$me"`` and an amqp-value body (a map);
* the response carries ``correlation-id`` = the request's id and ``subject`` = the
  HTTP status code as a string; an error response's body is a text.

Requests run over a short-lived connection of their own, opened with the same host,
credentials, TLS settings and virtual host as the engine's connection, from the
calling thread (python-qpid-proton's blocking API): never on an engine's I/O thread.
"""
import logging
import time
import uuid
from urllib.parse import quote

import proton
from proton import Message, symbol
from proton.reactor import LinkOption
from proton.utils import BlockingConnection

from fastamqp import exceptions
from fastamqp.engine.control import ca_file, sasl_props

LOG = logging.getLogger(__name__)

NODE = "/management"
CAPABILITY = "LINK_PAIR_V1_0"
DEFAULT_TIMEOUT = 10.0

# Statuses that mean "the broker will not do it" (nothing a retry fixes): 400 bad
# request, 403 access refused, 404 missing (a vhost, an exchange), 405, 409 exists with
# other properties (precondition failed).
REFUSED = {400, 403, 404, 405, 409}


# fastamqp.engine.control.sasl_props keys -> python-qpid-proton connect() arguments.
_SASL_KWARGS = {"x-username": "user", "x-password": "password",
                "x-sasl-mechs": "allowed_mechs", "x-sasl-config-dir": "sasl_config_path",
                "x-sasl-config-name": "sasl_config_name"}


def path(kind, name):
    """``/queues/NAME`` or ``/exchanges/NAME`` (RFC 3986 percent-encoding)."""
    return f"/{kind}/{quote(name, safe='')}"


class _Paired(LinkOption):
    """The management node's link pair rules (module docstring)."""

    def __init__(self, sender):
        self._sender = sender

    def apply(self, link):
        if self._sender:
            link.source.address = NODE
        else:
            link.target.address = NODE
        link.snd_settle_mode = proton.Link.SND_SETTLED
        link.rcv_settle_mode = proton.Link.RCV_FIRST
        link.properties = proton.PropertyDict({symbol("paired"): True})


def _ssl_domain(settings, peer_name):
    domain = proton.SSLDomain(proton.SSLDomain.MODE_CLIENT)
    domain.set_trusted_ca_db(ca_file(settings))
    domain.set_peer_authentication(proton.SSLDomain.VERIFY_PEER_NAME)
    if settings.ssl_cert_file:
        domain.set_credentials(settings.ssl_cert_file,
                               settings.ssl_key_file or settings.ssl_cert_file,
                               settings.ssl_key_password)
    return domain


class Management:
    """One connection to a RabbitMQ 4 node's management node (a context manager).

    ``host`` is a fastamqp.engine.interface.Host, ``settings`` the engine's
    ConnectionSettings (SASL, TLS, virtual host). Errors are
    exceptions.DeclarationError naming the node, the resource and the cause.
    """

    def __init__(self, host, settings, timeout=DEFAULT_TIMEOUT):
        self.host = host
        self._settings = settings
        self._timeout = timeout
        self._conn = self._sender = self._receiver = None

    @property
    def where(self):
        return f"RabbitMQ at {self.host.hostname}:{self.host.port}"

    def open(self):
        host, settings = self.host, self._settings
        hostname = host.hostname
        if ":" in hostname and not hostname.startswith("["):
            hostname = f"[{hostname}]"
        scheme = "amqps" if settings.tls else "amqp"
        # The engine's SASL choices (fastamqp.engine.control), in the blocking API's terms.
        kwargs = {"sasl_enabled": True}
        kwargs.update((_SASL_KWARGS[k], v) for k, v in sasl_props(settings, host).items()
                      if k in _SASL_KWARGS)
        if settings.virtual_host:
            kwargs["virtual_host"] = settings.virtual_host
        try:
            ssl_domain = (_ssl_domain(settings, settings.ssl_peer_name or host.hostname)
                          if settings.tls else None)
            self._conn = BlockingConnection(f"{scheme}://{hostname}:{host.port}",
                                            timeout=self._timeout,
                                            ssl_domain=ssl_domain, **kwargs)
            name = f"fastamqp-management-{uuid.uuid4().hex}"
            self._sender = self._conn.create_sender(NODE, name=name,
                                                    options=_Paired(True))
            self._receiver = self._conn.create_receiver(NODE, credit=100, name=name,
                                                        options=_Paired(False))
        except Exception as exc:
            self.close()
            raise self._error(None, exc) from None
        return self

    def close(self):
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # the peer went away: nothing left to close
                LOG.debug("closing the management connection", exc_info=True)

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def _error(self, what, exc):
        text = str(exc) or type(exc).__name__
        if isinstance(exc, proton.ConnectionException) or "amqp:" in text:
            # The peer closed the connection or a link: its condition says why
            # (amqp:unauthorized-access, amqp:not-found for an unknown vhost...).
            refused = any(c in text for c in ("unauthorized", "not-found",
                                              "not-allowed", "forbidden"))
        else:
            refused = False
        subject = f" {what}" if what else ""
        return exceptions.DeclarationError(
            f"{self.where}: the management node request{subject} failed: {text}",
            refused=refused)

    def _session_ended(self, what, condition):
        name = condition.name if condition is not None else None
        description = condition.description if condition is not None else None
        refused = bool(name) and name in ("amqp:unauthorized-access", "amqp:not-found",
                                          "amqp:not-allowed", "amqp:invalid-field")
        return exceptions.DeclarationError(
            f"{self.where} refused {what} ({name}): {description}" if refused else
            f"{self.where}: {what} ended the management session ({name}: "
            f"{description})", refused=refused, status=403 if
            name == "amqp:unauthorized-access" else None)

    def request(self, method, resource, body=None, ok=(200, 201, 204)):
        """(status, response body) of one request; DeclarationError unless the
        status is in ``ok``."""
        message_id = uuid.uuid4().hex
        what = f"{method} {resource}"
        receiver = self._receiver
        session = receiver.link.session

        def answered():
            # RabbitMQ 4.0 refuses some requests (access refused: amqp:unauthorized-
            # access) by ending the session, not with a response.
            return (receiver.fetcher.has_message
                    or session.state & proton.Endpoint.REMOTE_CLOSED)
        try:
            # Presettled (the pair's settle mode): sending does not wait for an outcome.
            self._sender.send(Message(id=message_id, address=resource,
                                      subject=method, reply_to="$me", body=body))
            deadline = time.monotonic() + self._timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no response within {self._timeout:g} s")
                self._conn.wait(answered, timeout=left,
                                msg=f"waiting for the response to {what}")
                if session.state & proton.Endpoint.REMOTE_CLOSED:
                    raise self._session_ended(what, session.remote_condition)
                # Responses come settled (the pair's settle mode): nothing to accept.
                response = receiver.fetcher.pop()
                if response.correlation_id == message_id:
                    break
        except exceptions.DeclarationError:
            raise
        except Exception as exc:
            raise self._error(what, exc) from None
        try:
            status = int(response.subject)
        except (TypeError, ValueError):
            status = None
        if status in ok:
            return status, response.body
        refused = status in REFUSED
        detail = response.body if isinstance(response.body, str) else repr(response.body)
        raise exceptions.DeclarationError(
            f"{self.where} refused {what} ({status}): {detail}"
            if refused else f"{self.where}: {what} answered {status}: {detail}",
            refused=refused, status=status)

    # ---- resources ---------------------------------------------------------------
    def declare_queue(self, name, durable=True, exclusive=False, auto_delete=False,
                      arguments=None):
        """PUT /queues/NAME: 200 when it exists with these properties, 201 when made;
        409 when it exists with others."""
        body = {"durable": durable, "exclusive": exclusive, "auto_delete": auto_delete,
                "arguments": dict(arguments or {})}
        return self.request("PUT", path("queues", name), body, ok=(200, 201))

    def bind(self, queue, exchange, key, arguments=None):
        """POST /bindings (a binding that exists already is fine: 204 again)."""
        body = {"source": exchange, "binding_key": key,
                "destination_queue": queue, "arguments": dict(arguments or {})}
        return self.request("POST", "/bindings", body, ok=(201, 204))
