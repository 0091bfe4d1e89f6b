"""What both connection engines decide the same way: connection status, refusals and
the errors callers see, and the SASL and TLS settings made for each host.

The connection front (``front.py``) uses it for both engines, which differ only in how
their I/O layers move frames; everything here is about *who* we connect to and *why* a
host would not have us:

* SASL and TLS are configured afresh for EVERY connection from the host being
  connected to: the certificate name checked is that host's (the original driver once
  checked the first host's name after a failover, LP#1938945);
* a refused login or a server certificate that does not verify is remembered per
  host; once every host has refused us, ``wait_active`` raises that error at once
  (AuthenticationError / ConnectionFailed naming the cause) instead of a timeout. The
  engine keeps retrying in the background, as the original driver did.
"""
import logging
import os
import socket
import ssl
import threading
import time

from fastamqp import exceptions
from fastamqp.engine import iolayer

LOG = logging.getLogger("fastamqp.connection")
# What the I/O thread did with confirmed and fanout sends whose callers had gone on
# (rejections, resends after a connection loss, fanouts with no receiver); the C
# engine's I/O thread hands these lines to its dispatcher, which logs them here.
SEND_LOG = logging.getLogger("fastamqp.send")


def window_full_text(address, settings):
    return (f"the send window stayed full until the deadline: the connection held "
            f"{settings.send_window} confirmed messages the peer had not settled, "
            f"and the one to {address} got no outcome either (a slow or stuck "
            f"consumer; see [oslo_messaging_amqp] send_window)")

# Proton's SASL outcomes, as the I/O layers report them.
SASL_NONE, SASL_OK, SASL_AUTH = iolayer.SASL_NONE, iolayer.SASL_OK, iolayer.SASL_AUTH


class ControlPlane:
    """Status and refusals of one engine; subclasses run the I/O."""

    def __init__(self, hosts, settings):
        if not hosts:
            raise exceptions.ConfigurationError("no host to connect to")
        self._hosts = list(hosts)
        self._settings = settings
        self._active = threading.Event()
        self._reply_ready = threading.Event()
        self._status = threading.Condition()   # notified on active / refused
        self._peer = None
        self._error = None
        self._refusals = {}          # host index -> error, since the last success
        self._fatal = None           # set when every host has refused us
        self._epoch = 0              # bumped on every successful connection
        self._current_index = 0
        self._pid = os.getpid()

    def _check_process(self):
        """Fork safety: the I/O thread does not exist in a forked child, and the
        engine's state may have been copied mid-update; the child must not touch it
        (the driver makes a fresh connection there)."""
        if os.getpid() != self._pid:
            raise exceptions.EngineClosed(
                "this connection belongs to the process that forked this one; a child "
                "process needs its own connection")

    # ---- status (any thread) ---------------------------------------------------
    def wait_active(self, timeout):
        if self._active.is_set():
            return self._peer          # every send asks: no lock when connected
        deadline = time.monotonic() + max(0.0, timeout)
        with self._status:
            while not self._active.is_set():
                if self._fatal is not None:
                    # Every host refused our credentials or certificate: waiting
                    # longer would only turn a clear error into a timeout.
                    raise self._fatal
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._status.wait(min(left, 1.0))
        if self._active.is_set():
            return self._peer
        refusal = next(reversed(self._refusals.values()), None) \
            if self._refusals else None
        if refusal is not None:
            raise refusal
        if self._error is not None:
            raise self._error
        raise exceptions.ConnectionFailed(
            f"not connected after {timeout} s to any of {self._hosts}")

    @property
    def peer(self):
        return self._peer

    @property
    def active(self):
        return self._active.is_set()

    def _opened(self):
        """A connection is up: forget past refusals."""
        self._error = None
        with self._status:
            self._epoch += 1
            self._refusals.clear()
            self._fatal = None

    def _open_then(self, index, peer, still_current, activate):
        """The peer's Open has arrived: run ``ConnectionSettings.prepare(peer)`` (the
        RabbitMQ declarations), then ``activate()`` (attach the links). prepare runs on
        a thread of its own -- a blocking network call must never hold an engine's
        I/O or event thread -- and is tried again, with the reconnection back-off,
        while it fails and the connection lasts (``still_current()``). The connection
        counts as up (past refusals forgotten) only once prepare succeeded."""
        prepare = self._settings.prepare
        if prepare is None:
            self._opened()
            activate()
            return

        def run():
            delay = self._settings.retry_interval
            while still_current():
                try:
                    prepare(peer)
                except Exception as exc:
                    self._prepare_failed(index, peer.host, exc)
                    if self._stopped.wait(delay):
                        return
                    delay = min(delay * self._settings.retry_backoff,
                                self._settings.retry_interval_max)
                    continue
                if still_current():
                    self._opened()
                    activate()
                return
        threading.Thread(target=run, daemon=True,
                         name=f"fastamqp prepare {self._settings.container_id}").start()

    def _prepare_failed(self, index, host, exc):
        if not isinstance(exc, exceptions.ConnectionFailed):
            LOG.exception("preparing the connection to %r failed", host)
            exc = exceptions.ConnectionFailed(
                f"preparing the connection to {host!r} failed: {exc}")
        if getattr(exc, "refused", False):
            # Refused (a permission, a queue with other arguments): it will not
            # pass by itself; wait_active says why instead of timing out.
            self._refused(index, exc)
        else:
            LOG.warning("%s", exc)
            self._error = exc
            with self._status:
                self._status.notify_all()

    def _set_active(self):
        with self._status:
            self._active.set()
            self._status.notify_all()

    def _refused(self, index, error):
        """``error`` (our credentials or the server certificate) is why the host at
        ``index`` would not have us; once every host has said no, wait_active raises."""
        LOG.error("%s", error)
        self._error = error
        with self._status:
            self._refusals.pop(index, None)   # keep the most recent one last
            self._refusals[index] = error
            if len(self._refusals) >= len(self._hosts):
                self._fatal = error
            self._status.notify_all()

    # ---- SASL ----------------------------------------------------------------------
    def _sasl_props(self, host):
        return sasl_props(self._settings, host)

    def _sasl_failed(self, index, host, result, mech, description):
        """The SASL exchange with ``host`` ended with ``result`` (not OK)."""
        offered = self._settings.sasl_mechanisms or (
            "PLAIN, ANONYMOUS, EXTERNAL, ..." if host.username else "ANONYMOUS")
        if result == SASL_AUTH and mech:
            who = f"user {host.username!r}" if host.username else "the client"
            cause = (f"the server refused the credentials of {who} "
                     f"(SASL mechanism {mech})")
        elif not mech:
            cause = (f"no SASL mechanism acceptable to both sides (this client allows "
                     f"{offered}; see sasl_mechanisms)")
        else:
            cause = f"SASL outcome {result} with mechanism {mech}"
        if description:
            cause += f": {description}"
        self._refused(index, exceptions.AuthenticationError(
            f"SASL authentication with {host!r} failed: {cause}"))

    def _closed_by_peer(self, index, host, name, description):
        """The peer closed the connection with condition ``name``."""
        if name and "unauthorized" in name:
            self._refused(index, exceptions.AuthenticationError(
                f"authentication with {host!r} failed: the peer closed the connection "
                f"with {name}: {description}"))

    # ---- TLS -----------------------------------------------------------------------
    def _peer_name(self, host):
        return self._settings.ssl_peer_name or host.hostname

    def _ca_file(self):
        return ca_file(self._settings)

    def _tls_config_failed(self, index, ca_file):
        """The client certificate, its key or the CA file could not be loaded. Never
        the password."""
        s = self._settings
        self._refused(index, exceptions.ConnectionFailed(
            f"TLS configuration error: cannot use the client certificate "
            f"{s.ssl_cert_file} / key {s.ssl_key_file} (unreadable file, or wrong "
            f"ssl_key_password), or the CA file {ca_file}"))

    def _tls_failed(self, index, host, text):
        """The TLS handshake failed. Proton says only "certificate verify failed" for
        both an untrusted certificate and a name mismatch: a short check in another
        thread (Python's ssl, same CA file) tells which, then the host counts as
        refusing us."""
        epoch = self._epoch
        peer_name = self._peer_name(host)
        try:
            ca_file = self._ca_file()
        except exceptions.FastAmqpError:
            ca_file = None
        self._error = exceptions.ConnectionFailed(
            f"TLS handshake with {host!r} failed: {tls_reason(text)}")

        def diagnose():
            cause = diagnose_tls(host, ca_file, peer_name, text)
            with self._status:
                if self._epoch == epoch and not self._active.is_set():
                    self._refused(index, exceptions.ConnectionFailed(
                        f"TLS handshake with {host!r} failed: {cause}"))
        threading.Thread(target=diagnose, daemon=True,
                         name="fastamqp TLS diagnosis").start()


_TLS_MARKERS = ("SSL Failure", "certificate verify failed", "SSL routines", "TLS")


def sasl_props(settings, host):
    """SASL properties for ``host`` (its own user and password), in pyngus' terms
    (the front hands the I/O layers user, password and mechanisms from them)."""
    props = {}
    mechs = " ".join(settings.sasl_mechanisms.upper().split())
    if host.username:
        props["x-username"] = host.username
        props["x-password"] = host.password or ""
    if mechs:
        # pyngus also forbids PLAIN/ANONYMOUS unless one of them is listed.
        props["x-sasl-mechs"] = mechs
    elif not host.username and not settings.ssl_cert_file:
        props["x-sasl-mechs"] = "ANONYMOUS"
    if settings.sasl_config_dir:
        props["x-sasl-config-dir"] = settings.sasl_config_dir
    if settings.sasl_config_name:
        props["x-sasl-config-name"] = settings.sasl_config_name
    if not props:
        props["x-force-sasl"] = True   # e.g. EXTERNAL with only a certificate
    return props


def ca_file(settings):
    """The CA certificates a TLS connection verifies the server with: ssl_ca_file,
    else the system's."""
    if settings.ssl_ca_file:
        return settings.ssl_ca_file
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.capath, paths.openssl_cafile,
                      paths.openssl_capath):
        if candidate and os.path.exists(candidate):
            return candidate
    raise exceptions.ConfigurationError(
        "ssl is on but no CA certificates were found to verify the server with: "
        "set ssl_ca_file")


def is_tls_failure(text):
    return any(marker in text for marker in _TLS_MARKERS)


def tls_reason(text):
    if "certificate verify failed" in text:
        return ("the server certificate did not verify (untrusted, or its name does "
                f"not match): {text}")
    if "certificate required" in text:
        return ("the server requires a client certificate (set ssl_cert_file and "
                f"ssl_key_file): {text}")
    if "unknown ca" in text or "bad certificate" in text:
        return f"the server did not accept our client certificate: {text}"
    return text


def _name_matches(pattern, name):
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def diagnose_tls(host, ca_file, peer_name, text, timeout=3.0):
    """Tell an untrusted server certificate from a name mismatch (Proton's error does
    not), with one extra TLS handshake that checks the chain only."""
    generic = tls_reason(text)
    if not ca_file or "certificate verify failed" not in text:
        return generic
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        if os.path.isdir(ca_file):
            ctx.load_verify_locations(capath=ca_file)
        else:
            ctx.load_verify_locations(cafile=ca_file)
        with socket.create_connection((host.hostname, host.port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=None) as tls:
                cert = tls.getpeercert()
    except ssl.SSLCertVerificationError as exc:
        return (f"the server certificate did not verify against the CA file {ca_file}: "
                f"{exc.verify_message}")
    except (OSError, ValueError):
        return generic
    # Proton matches the DNS names of subjectAltName, then the commonName (not IPs).
    names = [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    names += [value for rdn in cert.get("subject", ()) for key, value in rdn
              if key == "commonName" and value not in names]
    if not any(_name_matches(n, peer_name) for n in names):
        return (f"the server certificate is trusted but its names {names} do not match "
                f"the expected peer name {peer_name!r} (name mismatch)")
    return generic
