"""``fastamqp check URL``: connect to an AMQP 1.0 peer the way the driver would, and say
what is there.

The connection is made by the oslo.messaging driver itself (``ProtonDriver`` with the
``[oslo_messaging_amqp]`` options of the given configuration files and the URL's query
options), so the settings -- SASL, TLS, virtual host, container id, reply source -- are
exactly those a service would use. It prints the peer's product and version, the
addressing syntax the driver would pick for it, the SASL and TLS state, and the round
trip of a probe message through the connection's own reply address.

On failure it prints one cause -- connection refused, host not found, authentication
failed, TLS verification failed, address or link rejected by the peer, timeout -- and
exits non-zero (see EXIT_CODES).
"""
import argparse
import os
import socket
import ssl
import sys
import time
import uuid

EXIT_OK = 0
EXIT_UNREACHABLE = 3     # refused, unknown host, no answer
EXIT_AUTH = 4            # SASL authentication failed
EXIT_TLS = 5             # TLS verification / configuration failed
EXIT_REJECTED = 6        # an address or link refused by the peer
EXIT_TIMEOUT = 7         # connected, but the probe did not come back in time
EXIT_CONFIG = 8          # the URL or options cannot be used

EXIT_CODES = {EXIT_OK: "the peer works", EXIT_UNREACHABLE: "connection refused or no peer",
              EXIT_AUTH: "authentication failed", EXIT_TLS: "TLS failed",
              EXIT_REJECTED: "address or link rejected", EXIT_TIMEOUT: "probe timed out",
              EXIT_CONFIG: "bad URL or options"}

_ADDRESSER_MODES = {"LegacyAddresser": "legacy", "RoutableAddresser": "routable",
                    "RabbitMQAddresser": "rabbitmq"}


class CheckFailed(Exception):
    def __init__(self, code, headline, detail="", hint=""):
        super().__init__(headline)
        self.code, self.headline, self.detail, self.hint = code, headline, detail, hint


def add_arguments(parser):
    parser.add_argument("url", help="transport URL, e.g. amqp://user:pass@host:5672/ "
                        "(query options such as ?ssl=1&ssl_ca_file=... apply as in "
                        "transport_url)")
    parser.add_argument("--config-file", action="append", default=[], metavar="FILE",
                        help="oslo.config file(s) with [oslo_messaging_amqp] (and "
                             "[DEFAULT] control_exchange); repeatable. Default: the "
                             "options' defaults")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds for the connection, and again for the probe "
                             "(default 10)")
    parser.add_argument("--no-probe", action="store_true",
                        help="connect and report only; send no message")
    return parser


def _load_conf(config_files):
    from oslo_config import cfg
    import oslo_messaging
    from fastamqp import opts

    conf = cfg.ConfigOpts()
    # oslo.messaging's own transport options ([DEFAULT] control_exchange, ...), which
    # the transport registers before it loads a driver.
    conf.register_opts(oslo_messaging.transport._transport_opts)
    opts.register_opts(conf)
    for path in config_files:
        if not os.path.isfile(path):
            raise CheckFailed(EXIT_CONFIG, f"no such configuration file: {path}")
    conf(args=[], project="fastamqp-check", default_config_files=list(config_files))
    return conf


def _driver(conf, url_text):
    import oslo_messaging
    from fastamqp import driver

    try:
        url = oslo_messaging.TransportURL.parse(conf, url_text)
    except Exception as exc:
        raise CheckFailed(EXIT_CONFIG, f"cannot parse the transport URL: {exc}")
    if url.transport not in ("amqp", None):
        raise CheckFailed(EXIT_CONFIG, f"not an amqp:// URL: {url.transport}://")
    try:
        return driver.ProtonDriver(conf, url, default_exchange=conf.control_exchange)
    except Exception as exc:
        raise CheckFailed(EXIT_CONFIG, f"the driver refuses these options: {exc}")


def _classify_connection_error(exc, hosts, tls):
    """A fastamqp.exceptions.ConnectionFailed (or subclass) into a CheckFailed."""
    from fastamqp import exceptions
    text = str(exc)
    lower = text.lower()
    if isinstance(exc, exceptions.DeclarationError):
        return CheckFailed(
            EXIT_REJECTED if exc.refused else EXIT_UNREACHABLE,
            "RabbitMQ refused a declaration" if exc.refused else
            "RabbitMQ's management node did not answer", text,
            "fastamqp declares its queues and bindings itself on RabbitMQ 4: the user "
            "needs configure, write and read permission on them in the virtual host "
            "(rabbitmqctl set_permissions), and a queue that exists already must have "
            "the same type and arguments (rabbit_quorum_queue)" if exc.refused else "")
    if isinstance(exc, exceptions.AuthenticationError):
        return CheckFailed(EXIT_AUTH, "authentication failed", text,
                           "check the user name and password in the URL, "
                           "sasl_mechanisms, and the peer's SASL configuration")
    if "tls configuration error" in lower:
        return CheckFailed(EXIT_TLS, "TLS configuration error", text,
                           "check ssl_ca_file, ssl_cert_file, ssl_key_file and "
                           "ssl_key_password")
    if lower.startswith("tls handshake") or (tls and ("certificate" in lower
                                                      or "ssl" in lower)):
        if "name mismatch" in lower or "do not match" in lower:
            headline = "TLS verification failed: certificate name mismatch"
        elif "did not verify" in lower or "verify failed" in lower:
            headline = "TLS verification failed: untrusted server certificate"
        else:
            headline = "TLS handshake failed"
        return CheckFailed(EXIT_TLS, headline, text,
                           "ssl_ca_file must hold the CA that signed the server "
                           "certificate, whose name must match the host in the URL "
                           "(or the virtual host with ssl_verify_vhost)")
    if "refused" in lower:
        return CheckFailed(EXIT_UNREACHABLE, "connection refused", text,
                           f"nothing listens at {', '.join(_where(h) for h in hosts)}")
    if ("name or service not known" in lower or "getaddrinfo" in lower
            or "nodename nor servname" in lower or "no address associated" in lower
            or "temporary failure in name resolution" in lower):
        return CheckFailed(EXIT_UNREACHABLE, "host not found", text,
                           "the host name does not resolve")
    if tls and "not connected after" in lower:
        return CheckFailed(EXIT_UNREACHABLE, "no connection (no answer)", text,
                           "a TLS client talking to a plain AMQP port (or the reverse) "
                           "hangs like this: check ssl and the port")
    if "closed by" in lower or "amqp:" in lower:
        return CheckFailed(EXIT_REJECTED, "the peer closed the connection", text)
    return CheckFailed(EXIT_UNREACHABLE, "no connection", text)


def _wait_active(conn, hosts, settings, timeout):
    """conn.wait_active(timeout), but with one host a refused or unresolvable
    connection ends the wait at once: the engine would only retry the same host."""
    from fastamqp import exceptions
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            return conn.wait_active(max(0.0, min(left, 0.25)))
        except exceptions.ConnectionFailed as exc:
            failure = _classify_connection_error(exc, hosts, settings.tls)
            # The engine's own verdict "every host refused us" (credentials or
            # certificate) is final; so is a refused port when there is one host.
            if left <= 0.25 or getattr(conn, "_fatal", None) is not None or (
                    len(hosts) == 1 and failure.headline in ("connection refused",
                                                             "host not found")):
                if left <= 0.25 and failure.detail.startswith("not connected after"):
                    failure.detail = (f"not connected after {timeout} s to any of "
                                      f"{hosts}")
                raise failure from None


def _where(host):
    return f"{host.hostname}:{host.port}"


def _peer_certificate(host, settings, timeout):
    """The server certificate, from a separate handshake with Python's ssl and the
    same CA file and expected name as the engine (the engine does not report it)."""
    from fastamqp.engine import control as _control
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False        # checked below like Proton does (DNS SANs, CN)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if settings.ssl_ca_file:
        if os.path.isdir(settings.ssl_ca_file):
            ctx.load_verify_locations(capath=settings.ssl_ca_file)
        else:
            ctx.load_verify_locations(cafile=settings.ssl_ca_file)
    else:
        ctx.load_default_certs()
    peer_name = settings.ssl_peer_name or host.hostname
    sni = None if _is_ip(peer_name) else peer_name
    with socket.create_connection((host.hostname, host.port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as tls:
            cert = tls.getpeercert()
            version, cipher = tls.version(), tls.cipher()[0]
    names = list(dict.fromkeys(v for k, v in cert.get("subjectAltName", ())
                               if k in ("DNS", "IP Address")))
    matches = any(_control._name_matches(n, peer_name) for n in names) or any(
        _control._name_matches(v, peer_name)
        for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName")
    return {"subject": _dn(cert.get("subject")), "issuer": _dn(cert.get("issuer")),
            "not_after": cert.get("notAfter"), "names": names, "version": version,
            "cipher": cipher, "peer_name": peer_name, "name_ok": matches}


def _is_ip(name):
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in name else socket.AF_INET, name)
        return True
    except OSError:
        return False


def _dn(rdns):
    short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
             "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST"}
    return ",".join(f"{short.get(k, k)}={v}" for rdn in rdns or () for k, v in rdn)


def _sasl_line(conn, host, settings):
    """What we can say about SASL: the engine does not report the mechanism the
    peer chose on a successful connection, so this is what we allowed and sent."""
    props = conn._sasl_props(host)
    allowed = props.get("x-sasl-mechs") or "any the peer offers (PLAIN, EXTERNAL, ANONYMOUS...)"
    who = f"user {host.username}" if host.username else (
        "client certificate" if settings.ssl_cert_file else "no user")
    if allowed == "ANONYMOUS":
        guess = "ANONYMOUS"
    elif host.username and props.get("x-sasl-mechs") in (None, "PLAIN"):
        guess = "PLAIN (most likely: a user and password were given)"
    elif not host.username and settings.ssl_cert_file:
        guess = "EXTERNAL (most likely: a client certificate and no user)"
    else:
        guess = "one of the allowed mechanisms"
    return f"{guess}; {who}; allowed: {allowed}"


def _probe(conn, serializer, timeout, reply_to=lambda address: address):
    """Send one message to the connection's own reply address (as a server would
    reply: to the requests' reply-to) and time it back."""
    from fastamqp import codec, exceptions
    from fastamqp.engine.interface import Outcome

    deadline = time.monotonic() + timeout
    try:
        address = conn.reply_address(deadline)
    except exceptions.SendTimeout as exc:
        raise CheckFailed(EXIT_REJECTED, "no reply address: the reply link was not "
                          "attached", str(exc), "the peer refused the dynamic (or "
                          "named) reply source; see the peer's log")
    message_id = uuid.uuid4().hex
    payload = codec.encode_reply(address, message_id,
                                 response={"fastamqp-check": message_id},
                                 serializer=serializer)
    waiter = conn.expect_reply(message_id)
    start = time.perf_counter()
    address = reply_to(address)
    try:
        result = conn.send(address, payload, presettled=False, deadline=deadline, retry=0)
    except exceptions.SendTimeout as exc:
        waiter.cancel()
        if exc.no_credit:
            raise CheckFailed(EXIT_REJECTED, "the peer gave no credit for the probe "
                              "address", f"{address}: {exc}")
        raise CheckFailed(EXIT_TIMEOUT, "the probe was not settled in time", str(exc))
    except exceptions.SendFailure as exc:
        waiter.cancel()
        raise CheckFailed(EXIT_REJECTED, "address or link rejected by the peer",
                          f"{address}: {exc}")
    except exceptions.ConnectionFailed as exc:
        waiter.cancel()
        raise CheckFailed(EXIT_UNREACHABLE, "connection lost during the probe", str(exc))
    if result.outcome is not Outcome.ACCEPTED:
        waiter.cancel()
        why = " ".join(filter(None, [result.condition, result.description]))
        raise CheckFailed(EXIT_REJECTED, f"the probe message was {result.outcome.value} "
                          f"by the peer", f"{address}: {why}".rstrip(": "))
    try:
        data = waiter.wait(deadline)
    except exceptions.ReplyTimeout:
        raise CheckFailed(EXIT_TIMEOUT, "the probe message did not come back",
                          f"sent to {address}, accepted, nothing received in {timeout} s")
    except exceptions.FastAmqpError as exc:
        raise CheckFailed(EXIT_UNREACHABLE, "connection lost during the probe", str(exc))
    took = time.perf_counter() - start
    decoded = codec.decode(data)
    if decoded.correlation_id != message_id:
        raise CheckFailed(EXIT_REJECTED, "the probe came back altered",
                          f"correlation-id {decoded.correlation_id!r}")
    return address, took, len(payload)


def run(args, out=sys.stdout):
    from fastamqp import addressing, engine, exceptions

    def line(label, value):
        print(f"  {label:<14}{value}", file=out)

    conf = _load_conf(args.config_file)
    drv = _driver(conf, args.url)
    hosts = drv._hosts
    print(f"fastamqp check {', '.join(repr(h) for h in hosts)}", file=out)
    try:
        conn = drv.connection()     # the driver's own settings and engine
    except exceptions.FastAmqpError as exc:
        raise CheckFailed(EXIT_CONFIG, "the engine refuses these settings", str(exc))
    kind = {"fastamqp.engine.c.connection": "c", "fastamqp.engine.pure.connection": "python"}.get(
        type(conn).__module__, type(conn).__module__)
    codec = engine.codec.IMPLEMENTATION
    line("engine", f"{kind} (codec: {codec})" if kind != codec else kind)
    settings = conn._settings
    declarer = drv._declarers.get(conn)

    def declarations():
        """What fastamqp declared on RabbitMQ for this connection, and what not."""
        for spec, outcome in (declarer.log if declarer is not None else []):
            what = "transient" if spec.transient else (
                "quorum" if drv.options.rabbit_quorum_queue else "classic")
            binds = ", ".join(f"{x}/{k}" for x, k in spec.bindings)
            line("declared" if outcome == "declared" else "NOT declared",
                 f"queue {spec.name} ({what}{'; bound ' + binds if binds else ''})"
                 + ("" if outcome == "declared" else f": {outcome}"))
    try:
        start = time.perf_counter()
        try:
            peer = _wait_active(conn, hosts, settings, args.timeout)
        except CheckFailed:
            declarations()
            raise
        connected = time.perf_counter() - start
        line("connected", f"{_where(peer.host)} in {connected * 1000:.1f} ms "
                          f"(container {peer.container_id})")
        line("peer", f"{peer.product or '(no product)'} {peer.version or '(no version)'}")
        extra = {k: v for k, v in (peer.properties or {}).items()
                 if k not in ("product", "version")}
        if extra:
            line("properties", ", ".join(f"{k}={v}" for k, v in sorted(extra.items())))
        addresser = drv._addresser(peer)
        mode = _ADDRESSER_MODES.get(type(addresser).__name__, type(addresser).__name__)
        line("addressing", f"{mode} (addressing_mode={drv.options.addressing_mode})")
        line("  rpc", addresser.resolve(_Target(topic="compute")))
        line("  notify", addresser.resolve(_Target(topic="notifications.info"),
                                             addressing.SERVICE_NOTIFY))
        mech = getattr(peer, "sasl_mechanism", None)
        if mech:
            who = f"user {peer.host.username}" if peer.host.username else "no user"
            line("SASL", f"{mech} ({who})")
        else:
            line("SASL", _sasl_line(conn, peer.host, settings))
        engine_tls = getattr(peer, "tls", None)
        if settings.tls or engine_tls is not None:
            if engine_tls is not None:
                line("TLS", f"on, {engine_tls.protocol} {engine_tls.cipher}, server "
                            f"certificate verified")
                line("  subject", engine_tls.subject)
            # Issuer, names and expiry: the engine does not report them; a second,
            # separate handshake with Python's ssl (same CA file and peer name) does.
            try:
                cert = _peer_certificate(peer.host, settings, args.timeout)
            except (OSError, ValueError) as exc:
                if engine_tls is None:
                    line("TLS", f"on (the engine verified the server; the certificate "
                                f"could not be fetched again: {exc})")
            else:
                if engine_tls is None:
                    line("TLS", f"on, {cert['version']} {cert['cipher']}, server "
                                f"certificate verified")
                    line("  subject", cert["subject"])
                line("  issuer", cert["issuer"])
                line("  names", ", ".join(cert["names"]) or "(no subjectAltName)")
                line("  expires", cert["not_after"])
        else:
            line("TLS", "off")
        declarations()
        if not args.no_probe:
            address, took, size = _probe(conn, drv.serializer, args.timeout,
                                         addresser.reply_to)
            line("reply address", address)
            line("round trip", f"{took * 1000:.2f} ms ({size}-byte probe to the reply "
                               f"address and back)")
    finally:
        conn.close(5)
    print("OK", file=out)
    return EXIT_OK


class _Target:
    """A Target for the sample addresses (addressing duck-types targets)."""

    def __init__(self, topic, server=None, exchange=None, fanout=False):
        self.topic, self.server, self.exchange, self.fanout = topic, server, exchange, fanout


def report_failure(failure, out=sys.stderr):
    print(f"FAILED: {failure.headline}", file=out)
    if failure.detail:
        print(f"  cause: {failure.detail}", file=out)
    if failure.hint:
        print(f"  hint:  {failure.hint}", file=out)
    print(f"  exit status {failure.code} ({EXIT_CODES[failure.code]})", file=out)


def main(argv=None, out=None, err=None):
    out = out or sys.stdout
    err = err or sys.stderr
    parser = add_arguments(argparse.ArgumentParser(
        prog="fastamqp check",
        description="Connect to an AMQP 1.0 peer as the oslo.messaging driver would "
                    "(same options and engine) and report the peer, the addressing "
                    "syntax, SASL, TLS and the round trip of a probe message.",
        epilog="exit status: " + "; ".join(f"{code} {text}"
                                           for code, text in EXIT_CODES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    import logging
    import warnings
    logging.basicConfig(level=logging.CRITICAL)   # causes are printed, not logged
    warnings.filterwarnings("ignore", message="(?s).*Eventlet is deprecated")
    try:
        return run(args, out)
    except CheckFailed as failure:
        out.flush()
        report_failure(failure, err)
        return failure.code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
