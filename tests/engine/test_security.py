"""SASL and TLS on real wire traffic: the engine against the embedded intermediary.

Both sides run in this process; the certificates are made for the session with the
``openssl`` command line tool (tests/support/certs.py). The intermediary authenticates PLAIN
through Cyrus SASL and a sasldb it makes with saslpasswd2.

Every refusal must reach the caller of ``wait_active`` as a clear error well before
its timeout, and no password (SASL or TLS key) may show up in a log record, an
exception message or a repr.
"""
import logging
import shutil
import time

import pytest

from fastamqp import exceptions
from fastamqp.engine.pure import connection as pure_connection
from fastamqp.engine import py_codec as codec
from fastamqp.engine.interface import ConnectionSettings, Host, Outcome
from fastamqp.intermediary import Intermediary, Listener, TLSConfig
from support.certs import have_openssl, make_pki

pytestmark = pytest.mark.skipif(
    not have_openssl() or not (shutil.which("saslpasswd2")
                               or shutil.which("/usr/sbin/saslpasswd2")),
    reason="needs the openssl and saslpasswd2 (sasl2-bin) programs")

PASSWORD = "Pw-9f3c1e-not-in-logs"
WAIT = 8          # what the tests give wait_active
FAST = 3          # how soon a refusal must arrive instead


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


LISTENERS = ["plain", "plain_only", "tls", "external", "wrong_name", "untrusted",
             "localhost_only", "loopback_only"]


@pytest.fixture(scope="module")
def im(pki):
    """One broker with a listener per security setup (several listeners, each with
    its own TLS and SASL settings)."""
    def tls(pair, **kw):
        return TLSConfig(pair[0], pair[1], **kw)
    listen = [
        Listener("127.0.0.1", 0),                                    # plain
        Listener("127.0.0.1", 0, sasl_mechanisms="PLAIN"),           # plain_only
        Listener("127.0.0.1", 0, ssl=tls(pki.server)),               # tls
        Listener("127.0.0.1", 0, ssl=tls(pki.server, ca_file=pki.ca),
                 sasl_mechanisms="EXTERNAL"),                        # external
        Listener("127.0.0.1", 0, ssl=tls(pki.wrong_name)),           # wrong_name
        Listener("127.0.0.1", 0, ssl=tls(pki.untrusted)),            # untrusted
        Listener("127.0.0.1", 0, ssl=tls(pki.localhost_only)),       # localhost_only
        Listener("127.0.0.1", 0, ssl=tls(pki.loopback_only)),        # loopback_only
    ]
    with Intermediary(mode="broker", listen=listen, sasl_mechanisms="ANONYMOUS PLAIN",
                      users={"alice": PASSWORD}) as broker:
        broker.port_of = dict(zip(LISTENERS, broker.ports))
        yield broker


@pytest.fixture
def secrets_kept(caplog, pki):
    """Everything is logged at DEBUG; at the end no record may carry a password."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        text = record.getMessage()
        assert PASSWORD not in text, record
        assert pki.client_key_password not in text, record


@pytest.fixture
def connect(engine, secrets_kept):
    opened = []

    def open_(hosts, wait=True, **settings):
        settings.setdefault("container_id", f"sec-{len(opened)}")
        settings.setdefault("retry_interval", 0.2)
        settings.setdefault("retry_interval_max", 0.5)
        conn = engine.connection(list(hosts), ConnectionSettings(**settings))
        opened.append(conn)
        conn.start()
        if wait:
            conn.wait_active(WAIT)
        return conn
    yield open_
    for conn in opened:
        conn.close(5)


def refused(connect, hosts, error=exceptions.ConnectionFailed, **settings):
    """Connect, expect ``error`` from wait_active well before its timeout."""
    conn = connect(hosts, wait=False, **settings)
    start = time.monotonic()
    with pytest.raises(error) as info:
        conn.wait_active(WAIT)
    took = time.monotonic() - start
    assert took < FAST, f"the refusal took {took:.1f} s: it must not look like a timeout"
    text = str(info.value)
    assert PASSWORD not in text and PASSWORD not in repr(info.value)
    return text


def round_trip(conn, address="unicast.security.check"):
    msg = codec.encode_request(address, {"method": "hello"}, {})
    result = conn.send(address, msg, presettled=False, deadline=time.monotonic() + 5)
    assert result.outcome is Outcome.ACCEPTED
    sub = conn.subscribe([address], 10)
    try:
        batch = sub.poll(1, 5)
        assert batch, "nothing arrived"
        assert codec.decode(batch[0].payload).request == {"method": "hello"}
        sub.settle(batch[0], Outcome.ACCEPTED)
    finally:
        sub.close()


def host(im, listener, hostname="127.0.0.1", user=None, password=None):
    return Host(hostname, im.port_of[listener], user, password)


# ---- SASL ------------------------------------------------------------------------

def test_plain_login(connect, im, caplog):
    conn = connect([host(im, "plain", user="alice", password=PASSWORD)])
    round_trip(conn)
    assert any("user 'alice', SASL mechanism PLAIN" in r.getMessage()
               for r in caplog.records if r.name.startswith("fastamqp.intermediary"))


def test_plain_bad_password_is_an_authentication_error_at_once(connect, im):
    before = im.counters["auth_failures"]
    text = refused(connect, [host(im, "plain", user="alice", password="wrong-pw")],
                   exceptions.AuthenticationError)
    assert "refused the credentials" in text and "alice" in text
    assert "wrong-pw" not in text
    assert im.counters["auth_failures"] > before   # refused in SASL, on the wire


def test_every_host_refusing_is_reported_before_the_timeout(connect, im):
    hosts = [host(im, "plain", user="alice", password="nope"),
             host(im, "plain_only", user="alice", password="nope")]
    refused(connect, hosts, exceptions.AuthenticationError)


def test_unknown_user(connect, im):
    text = refused(connect, [host(im, "plain", user="mallory", password=PASSWORD)],
                   exceptions.AuthenticationError)
    assert "mallory" in text


def test_anonymous_not_offered_when_sasl_mechanisms_excludes_it(connect, im):
    # The listener would take ANONYMOUS; the client must not fall back to it.
    text = refused(connect, [host(im, "plain")], exceptions.AuthenticationError,
                   sasl_mechanisms="PLAIN")
    assert "no SASL mechanism" in text


def test_anonymous_refused_by_a_plain_only_listener(connect, im):
    refused(connect, [host(im, "plain_only")], exceptions.AuthenticationError)


def test_anonymous_login(connect, im):
    conn = connect([host(im, "plain")])
    assert conn.peer.product == "qpid-cpp"


def test_users_of_one_intermediary_do_not_log_in_to_another(connect, im):
    # Cyrus's sasldb is per process: the intermediary checks the user after SASL.
    with Intermediary(mode="router", sasl_mechanisms="PLAIN",
                      users={"bob": "bob-pw"}) as other:
        ok = connect([Host("127.0.0.1", other.port, "bob", "bob-pw")])
        assert ok.active
        refused(connect, [Host("127.0.0.1", other.port, "alice", PASSWORD)],
                exceptions.AuthenticationError)


def test_cyrus_options_reach_pyngus(engine):
    conn = engine.connection([Host()], ConnectionSettings(
        container_id="x", sasl_mechanisms="plain external",
        sasl_config_dir="/etc/fastamqp-sasl", sasl_config_name="client"))
    props = conn._sasl_props(Host("h", 5672, "u", "p"))
    assert props["x-sasl-mechs"] == "PLAIN EXTERNAL"
    assert props["x-sasl-config-dir"] == "/etc/fastamqp-sasl"
    assert props["x-sasl-config-name"] == "client"


# ---- TLS -------------------------------------------------------------------------

@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost"])
def test_tls_with_ca_file(connect, im, pki, hostname):
    conn = connect([host(im, "tls", hostname, "alice", PASSWORD)], ssl_ca_file=pki.ca)
    round_trip(conn, "unicast.security.tls")


def test_tls_untrusted_server_certificate(connect, im, pki):
    text = refused(connect, [host(im, "untrusted")], ssl_ca_file=pki.ca)
    assert "did not verify" in text and pki.ca in text


def test_tls_verifies_against_system_cas_by_default(connect, im):
    # ssl=True and no CA file: the system CAs, which do not know the test CA.
    text = refused(connect, [host(im, "tls")], ssl=True)
    assert "did not verify" in text


def test_tls_name_mismatch(connect, im, pki):
    text = refused(connect, [host(im, "wrong_name")], ssl_ca_file=pki.ca)
    assert "name mismatch" in text and "wrong.example.invalid" in text
    assert "'127.0.0.1'" in text


def test_tls_peer_name_override_for_vhost(connect, im, pki):
    # ssl_verify_vhost: the driver passes the virtual host as ssl_peer_name.
    conn = connect([host(im, "wrong_name")], ssl_ca_file=pki.ca,
                   ssl_peer_name="wrong.example.invalid")
    assert conn.active
    text = refused(connect, [host(im, "tls")], ssl_ca_file=pki.ca,
                   ssl_peer_name="wrong.example.invalid")
    assert "name mismatch" in text


def test_external_with_a_client_certificate(connect, im, pki, caplog):
    cert, key = pki.client
    conn = connect([host(im, "external")], sasl_mechanisms="EXTERNAL",
                   ssl_ca_file=pki.ca, ssl_cert_file=cert, ssl_key_file=key,
                   ssl_key_password=pki.client_key_password)
    round_trip(conn, "unicast.security.external")
    logins = [r.getMessage() for r in caplog.records
              if r.name.startswith("fastamqp.intermediary") and "login" in r.getMessage()]
    assert any("fastamqp-client" in m and "EXTERNAL" in m for m in logins), logins
    assert pki.client_key_password not in repr(conn._settings)


def test_external_without_a_client_certificate(connect, im, pki):
    text = refused(connect, [host(im, "external")], sasl_mechanisms="EXTERNAL",
                   ssl_ca_file=pki.ca)
    assert "client certificate" in text


def test_wrong_client_key_password(connect, im, pki):
    cert, key = pki.client
    text = refused(connect, [host(im, "external")], sasl_mechanisms="EXTERNAL",
                   ssl_ca_file=pki.ca, ssl_cert_file=cert, ssl_key_file=key,
                   ssl_key_password="not-the-key-password")
    assert "ssl_key_password" in text and "not-the-key-password" not in text


def test_failover_verifies_the_name_of_the_host_it_fails_over_to(connect, im, pki):
    # Each certificate names only its own host: checking the first host's name on
    # the second connection (LP#1938945) fails the failover.
    first = host(im, "localhost_only", "localhost")
    second = host(im, "loopback_only", "127.0.0.1")
    # The control: each certificate really is refused for the other name.
    refused(connect, [host(im, "localhost_only", "127.0.0.1")], ssl_ca_file=pki.ca)
    conn = connect([first, second], ssl_ca_file=pki.ca)
    assert conn.peer.host == first
    im.faults.drop_connections()
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if conn.active and conn.peer.host == second:
            break
        time.sleep(0.05)
    assert conn.active and conn.peer.host == second, conn.peer
    round_trip(conn, "unicast.security.failover")


def test_tls_peer_names_are_made_per_host(engine, pki):
    # What the front hands the I/O layer for each host: its own certificate name.
    conn = engine.connection([Host()], ConnectionSettings(container_id="x",
                                                          ssl_ca_file=pki.ca))
    assert conn._io_host(Host("a.example"))[5] == "a.example"
    assert conn._io_host(Host("b.example"))[5] == "b.example"
    plain = engine.connection([Host()], ConnectionSettings(container_id="y"))
    assert plain._io_host(Host("a.example"))[5] is None


def test_no_secret_in_reprs(pki):
    h = Host("h", 5672, "alice", PASSWORD)
    s = ConnectionSettings(container_id="x", ssl_key_password=pki.client_key_password)
    assert PASSWORD not in repr(h) and PASSWORD not in str(h)
    assert pki.client_key_password not in repr(s)
    assert "zz-secret" not in repr(TLSConfig("c", "k", key_password="zz-secret"))


def test_peer_info_tells_the_login_and_the_tls_session(connect, im, pki):
    plain = connect([host(im, "plain", user="alice", password=PASSWORD)])
    assert plain.peer.sasl_mechanism == "PLAIN"
    assert plain.peer.tls is None
    tls = connect([host(im, "tls")], ssl_ca_file=pki.ca)
    assert tls.peer.sasl_mechanism == "ANONYMOUS"
    assert tls.peer.tls is not None
    assert "CN=localhost" in tls.peer.tls.subject      # the server certificate's
    assert tls.peer.tls.protocol and tls.peer.tls.protocol.startswith("TLS")
    assert tls.peer.tls.cipher
