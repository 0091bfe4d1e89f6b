"""Credentials at the driver level (issue 8, docs/reliability.md): a transport URL with a
password, used through the oslo.messaging API on both engines, through a good login, a
wrong password, an unreachable host and a failed TLS handshake. Every log record (all
loggers, DEBUG), every exception text (str, repr, the formatted traceback with its
chained causes), the reprs of the transport, its driver and connection objects, and the
process's own stdout/stderr (Proton protocol traces go there) must be free of the
password and of the TLS key password. tests/engine/test_security.py covers the engine
level.
"""
import contextlib
import logging
import shutil
import traceback

import oslo_messaging
import pytest

from support import certs
from fastamqp.intermediary import Intermediary, Listener, TLSConfig
from support.faults import GROUP, conf, transports  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.security, pytest.mark.skipif(
    not certs.have_openssl() or not (shutil.which("saslpasswd2")
                                     or shutil.which("/usr/sbin/saslpasswd2")),
    reason="needs the openssl and saslpasswd2 (sasl2-bin) programs")]

PASSWORD = "Drv-pw-5e81b2-never-logged"
WRONG = "Drv-wrong-pw-0c44d9"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return certs.make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def im(pki):
    listen = [Listener("127.0.0.1", 0, sasl_mechanisms="PLAIN"),
              Listener("127.0.0.1", 0, ssl=TLSConfig(pki.untrusted[0], pki.untrusted[1]),
                       sasl_mechanisms="PLAIN"),
              Listener("127.0.0.1", 0, ssl=TLSConfig(pki.server[0], pki.server[1],
                                                     ca_file=pki.ca),
                       sasl_mechanisms="EXTERNAL")]
    with Intermediary(mode="broker", listen=listen, sasl_mechanisms="PLAIN",
                      users={"alice": PASSWORD}) as broker:
        broker.plain, broker.untrusted, broker.external = broker.ports
        yield broker


class Everything(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.texts = []

    def emit(self, record):
        text = record.getMessage()
        if record.exc_info:
            text += "".join(traceback.format_exception(*record.exc_info))
        self.texts.append(f"{record.name}: {text}")


@pytest.fixture
def captured(capfd):
    """All log records at DEBUG, and whatever reaches fd 1 and 2."""
    handler = Everything()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler.texts
    root.removeHandler(handler)
    root.setLevel(level)


def exception_texts(exc):
    texts = [str(exc), repr(exc),
             "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    for inner in (exc.__cause__, exc.__context__):
        if inner is not None:
            texts += [str(inner), repr(inner)]
    return texts


def check(texts, *secrets):
    for text in texts:
        for secret in secrets:
            assert secret not in text, text


def driver_reprs(transport):
    driver = transport._driver
    texts = [repr(transport), repr(driver), repr(driver._hosts), str(driver._hosts)]
    conn = driver._connection
    if conn is not None:
        texts += [repr(conn), repr(getattr(conn, "_hosts", None)),
                  repr(getattr(conn, "_settings", None)), repr(conn.peer)]
    return texts


class _Echo:
    def echo(self, ctxt, x):
        return x


@contextlib.contextmanager
def echo_server(transport):
    """An RPC server with an ``echo`` method on topic "sec" for the block; yields a
    client to it."""
    server = oslo_messaging.get_rpc_server(
        transport, oslo_messaging.Target(topic="sec", server="s1"), [_Echo()],
        executor="threading")
    server.start()
    try:
        yield oslo_messaging.get_rpc_client(
            transport, oslo_messaging.Target(topic="sec"), timeout=10)
    finally:
        server.stop()
        server.wait()


def test_good_login_logs_no_password(im, transports, conf, captured, capfd):
    conf.set_override("trace", True, GROUP)        # protocol traces too
    url = f"amqp://alice:{PASSWORD}@127.0.0.1:{im.plain}/"
    transport = transports(url)
    with echo_server(transport) as client:
        assert client.call({}, "echo", x="hi") == "hi"
        client.cast({}, "echo", x="cast")
        oslo_messaging.Notifier(transports(url, notification=True), publisher_id="p",
                                driver="messagingv2", topics=["sec"]).info({}, "e", {})
        texts = driver_reprs(transport)
    out, err = capfd.readouterr()
    check(captured + texts + [out, err], PASSWORD)
    assert any("alice" in t for t in captured), "nothing was logged about the login"


def test_wrong_password(im, transports, captured, capfd):
    transport = transports(f"amqp://alice:{WRONG}@127.0.0.1:{im.plain}/")
    client = oslo_messaging.get_rpc_client(
        transport, oslo_messaging.Target(topic="sec"), timeout=5)
    with pytest.raises(oslo_messaging.MessageDeliveryFailure) as info:
        client.call({}, "echo", x=1)
    texts = exception_texts(info.value)
    assert "alice" in texts[0]                          # says who, not with what
    out, err = capfd.readouterr()
    check(captured + texts + driver_reprs(transport) + [out, err], WRONG, PASSWORD)


def test_unreachable_host(transports, captured, capfd):
    transport = transports(f"amqp://alice:{PASSWORD}@127.0.0.1:1/")
    client = oslo_messaging.get_rpc_client(
        transport, oslo_messaging.Target(topic="sec"), timeout=2)
    with pytest.raises(oslo_messaging.MessagingTimeout) as info:
        client.call({}, "echo", x=1)
    texts = exception_texts(info.value)
    out, err = capfd.readouterr()
    check(captured + texts + driver_reprs(transport) + [out, err], PASSWORD)


def test_untrusted_server_certificate(im, pki, conf, transports, captured, capfd):
    conf.set_override("ssl_ca_file", pki.ca, GROUP)
    transport = transports(f"amqp://alice:{PASSWORD}@127.0.0.1:{im.untrusted}/")
    client = oslo_messaging.get_rpc_client(
        transport, oslo_messaging.Target(topic="sec"), timeout=5)
    with pytest.raises(oslo_messaging.MessagingException) as info:
        client.call({}, "echo", x=1)
    texts = exception_texts(info.value)
    assert "did not verify" in texts[0] or "TLS" in texts[0], texts[0]
    out, err = capfd.readouterr()
    check(captured + texts + driver_reprs(transport) + [out, err], PASSWORD)


def test_wrong_client_key_password(im, pki, conf, transports, captured, capfd):
    # EXTERNAL with a client certificate whose key needs a password; the wrong one.
    wrong_key_pw = "key-pw-wrong-77d1"
    conf.set_override("ssl_ca_file", pki.ca, GROUP)
    conf.set_override("ssl_cert_file", pki.client[0], GROUP)
    conf.set_override("ssl_key_file", pki.client[1], GROUP)
    conf.set_override("ssl_key_password", wrong_key_pw, GROUP)
    conf.set_override("sasl_mechanisms", "EXTERNAL", GROUP)
    transport = transports(f"amqp://localhost:{im.external}/")
    client = oslo_messaging.get_rpc_client(
        transport, oslo_messaging.Target(topic="sec"), timeout=5)
    with pytest.raises(oslo_messaging.MessagingException) as info:
        client.call({}, "echo", x=1)
    texts = exception_texts(info.value)
    out, err = capfd.readouterr()
    check(captured + texts + driver_reprs(transport) + [out, err], wrong_key_pw,
          pki.client_key_password)


def test_external_with_the_right_key_password_logs_none(im, pki, conf, transports,
                                                        captured, capfd):
    conf.set_override("ssl_ca_file", pki.ca, GROUP)
    conf.set_override("ssl_cert_file", pki.client[0], GROUP)
    conf.set_override("ssl_key_file", pki.client[1], GROUP)
    conf.set_override("ssl_key_password", pki.client_key_password, GROUP)
    conf.set_override("sasl_mechanisms", "EXTERNAL", GROUP)
    transport = transports(f"amqp://localhost:{im.external}/")
    with echo_server(transport) as client:
        assert client.call({}, "echo", x="ext") == "ext"
        texts = driver_reprs(transport)
    out, err = capfd.readouterr()
    check(captured + texts + [out, err], pki.client_key_password)
