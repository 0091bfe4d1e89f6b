"""``fastamqp check URL`` against the embedded intermediary (router and broker modes),
with SASL PLAIN users and TLS listeners: what it prints on success, and the one-screen
cause and exit status of each failure (refused port, bad password, untrusted
certificate).

The check runs in this process (``fastamqp.tools.check.main``) on the active engine (the C
one when it is built) and again on the pure-Python engine, which the check reaches the
way the driver does: through ``fastamqp.engine.Connection``, which the ``engine``
fixture (tests/conftest.py) sets.

FASTAMQP_WHEEL_SMOKE=1 (set by scripts/build-wheel and the cibuildwheel test-command)
means an installed wheel is under test: the C engine must be active, and the skip for
missing openssl/saslpasswd2 becomes a failure -- there the TLS and SASL tests are the
proof that the Proton C bundled in the wheel has both.
"""
import io
import os
import shutil
import socket
import time

import pytest

from fastamqp import cli, engine as engine_mod
from fastamqp.tools import check
from fastamqp.intermediary import Intermediary, Listener, TLSConfig
from support.certs import have_openssl, make_pki

PASSWORD = "Chk-6b1d-secret"
REQUIRE = os.environ.get("FASTAMQP_WHEEL_SMOKE", "") not in ("", "0")
HAVE_TOOLS = have_openssl() and bool(shutil.which("saslpasswd2")
                                     or os.path.exists("/usr/sbin/saslpasswd2"))
if REQUIRE and not HAVE_TOOLS:
    raise RuntimeError("FASTAMQP_WHEEL_SMOKE is set but openssl or "
                       "saslpasswd2 is missing")
needs_tools = pytest.mark.skipif(not HAVE_TOOLS, reason="needs openssl and saslpasswd2")


def run_check(*argv):
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    code = check.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue(), time.monotonic() - start


@pytest.fixture(scope="module")
def router():
    with Intermediary(mode="router") as im:
        yield im


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if not HAVE_TOOLS:
        pytest.skip("needs openssl and saslpasswd2")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(pki):
    """A broker (qpidd emulation) with a plain listener, a TLS listener and one with
    a certificate from a CA nobody trusts; PLAIN user alice."""
    listen = [Listener("127.0.0.1", 0),
              Listener("127.0.0.1", 0, ssl=TLSConfig(*pki.server)),
              Listener("127.0.0.1", 0, ssl=TLSConfig(*pki.untrusted))]
    with Intermediary(mode="broker", listen=listen, sasl_mechanisms="ANONYMOUS PLAIN",
                      users={"alice": PASSWORD}) as im:
        im.plain, im.tls, im.untrusted = im.ports
        yield im


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- success -------------------------------------------------------------------------
def test_router_success(engine, router):
    code, out, err, _ = run_check(f"amqp://127.0.0.1:{router.ports[0]}/")
    assert code == 0, err
    assert "peer          qpid-dispatch-router" in out
    assert "addressing    routable (addressing_mode=dynamic)" in out
    assert "openstack.org/om/rpc/anycast/openstack/compute" in out
    assert "SASL          ANONYMOUS" in out
    assert "TLS           off" in out
    assert "round trip" in out and " ms " in out
    assert out.rstrip().endswith("OK")
    assert err == ""


@pytest.mark.skipif(not REQUIRE, reason="only when testing an installed wheel")
def test_wheel_has_the_c_engine():
    import fastamqp
    assert engine_mod.engine_name() == "c", engine_mod.c_import_error
    assert engine_mod.c_connection is not None, engine_mod.c_import_error
    assert "site-packages" in fastamqp.__file__, fastamqp.__file__


def test_engine_line_names_the_active_engine(router):
    code, out, _, _ = run_check(f"amqp://127.0.0.1:{router.ports[0]}/")
    assert code == 0
    assert f"engine        {engine_mod.engine_name()}\n" in out


def test_config_file_chooses_addressing(engine, router, tmp_path):
    conf = tmp_path / "check.conf"
    conf.write_text("[DEFAULT]\ncontrol_exchange = nova\n"
                    "[oslo_messaging_amqp]\naddressing_mode = legacy\n")
    code, out, err, _ = run_check("--config-file", str(conf),
                                  f"amqp://127.0.0.1:{router.ports[0]}/")
    assert code == 0, err
    assert "addressing    legacy (addressing_mode=legacy)" in out
    assert "rpc         unicast.nova.compute" in out   # the legacy syntax, control_exchange nova


@needs_tools
def test_broker_plain_success(engine, broker):
    code, out, err, _ = run_check(f"amqp://alice:{PASSWORD}@127.0.0.1:{broker.plain}/")
    assert code == 0, err
    assert "peer          qpid-cpp" in out
    assert "addressing    legacy (addressing_mode=dynamic)" in out
    assert "SASL          PLAIN" in out and "user alice" in out
    assert "round trip" in out
    assert PASSWORD not in out + err


@needs_tools
def test_tls_success_shows_the_certificate(engine, broker, pki):
    code, out, err, _ = run_check(
        f"amqp://alice:{PASSWORD}@localhost:{broker.tls}/?ssl=1&ssl_ca_file={pki.ca}")
    assert code == 0, err
    assert "TLS           on, TLSv1." in out
    assert "subject     CN=localhost" in out
    assert "issuer      CN=fastamqp test CA" in out
    assert "round trip" in out


# ---- failures ------------------------------------------------------------------------
def test_refused_port(engine):
    port = free_port()
    code, out, err, took = run_check("--timeout", "5", f"amqp://127.0.0.1:{port}/")
    assert code == check.EXIT_UNREACHABLE
    assert "FAILED: connection refused" in err
    assert f"127.0.0.1:{port}" in err
    assert took < 4, "a refused port with one host must not wait for the timeout"
    assert len(err.splitlines()) <= 6     # one screen, no traceback
    assert "Traceback" not in err


@needs_tools
def test_bad_password(engine, broker):
    code, out, err, took = run_check(
        "--timeout", "8", f"amqp://alice:wrong-{PASSWORD}@127.0.0.1:{broker.plain}/")
    assert code == check.EXIT_AUTH
    assert "FAILED: authentication failed" in err
    assert PASSWORD not in out + err
    assert took < 5
    assert "Traceback" not in err


@needs_tools
def test_untrusted_certificate(engine, broker, pki):
    code, out, err, took = run_check(
        "--timeout", "8",
        f"amqp://localhost:{broker.untrusted}/?ssl=1&ssl_ca_file={pki.ca}")
    assert code == check.EXIT_TLS
    assert "FAILED: TLS verification failed: untrusted server certificate" in err, err
    assert took < 6
    assert "Traceback" not in err


def test_probe_rejected_by_the_peer(engine):
    with Intermediary(mode="router") as im:
        # every reply address (the router keys them without the "amqp:/" scheme)
        im.faults.set_outcome("_topo/", "rejected")
        code, out, err, _ = run_check("--timeout", "5",
                                      f"amqp://127.0.0.1:{im.ports[0]}/")
    assert code == check.EXIT_REJECTED
    assert "FAILED: the probe message was rejected by the peer" in err
    assert "amqp:internal-error" in err
    assert "peer          qpid-dispatch-router" in out   # what worked is still shown


def test_not_amqp_url():
    code, out, err, _ = run_check("rabbit://127.0.0.1:5672/")
    assert code == check.EXIT_CONFIG
    assert "not an amqp:// URL" in err


def test_cli_registration(router, capsys):
    assert cli.main(["check", "--no-probe", f"amqp://127.0.0.1:{router.ports[0]}/"]) == 0
    assert "qpid-dispatch-router" in capsys.readouterr().out
