"""Shared fixtures: every behavioural codec test runs on both engines.

``codec`` is parametrized over the C extension (id ``c``) and the pure-Python reference
(id ``python``). With ``FASTAMQP_PUREPYTHON=1`` the ``c`` parameter is skipped; without it,
a missing C extension is an error, never a skip (see also
tests/test_engine_selection.py::test_c_engine_present).

Hypothesis profiles (select with ``HYPOTHESIS_PROFILE=<name>``):
  default   100 examples per test, no deadline (the first C call may be slow)
  quick     10 examples (e.g. under valgrind)
  long      2000 examples, for soak runs
"""
import os

import pytest
from hypothesis import HealthCheck, settings

from fastamqp import engine

settings.register_profile(
    "default", max_examples=100, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "quick", max_examples=10, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "long", max_examples=2000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

PUREPYTHON_REASON = "FASTAMQP_PUREPYTHON=1: the C engine is disabled in this run"


def c_codec_or_fail():
    """The C codec; skip under FASTAMQP_PUREPYTHON=1, fail loudly when it is missing."""
    if engine.PUREPYTHON:
        pytest.skip(PUREPYTHON_REASON)
    if engine.c_codec is None:
        pytest.fail(f"the C codec (fastamqp._core) is not importable: "
                    f"{engine.c_import_error!r}; build it, or set "
                    f"FASTAMQP_PUREPYTHON=1 to test the pure-Python engine only",
                    pytrace=False)
    return engine.c_codec


# Session scope: hypothesis refuses function-scoped fixtures in @given tests, and the
# codec modules are stateless from the tests' point of view.
@pytest.fixture(scope="session", params=["c", "python"], ids=["c", "python"])
def codec(request):
    if request.param == "c":
        return c_codec_or_fail()
    return engine.py_codec


@pytest.fixture(scope="session")
def both_codecs():
    """(c, python) for differential tests."""
    return c_codec_or_fail(), engine.py_codec


ORIGINAL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "original")


@pytest.fixture(scope="session")
def original():
    """Run a script of tests/original/ with the ORIGINAL driver's Python (oslo.messaging
    14.9.3, made by scripts/setup-env-original; scripts/test sets
    FASTAMQP_ORIGINAL_PYTHON): ``original("addresses.py", request) -> answer``."""
    import json
    import subprocess
    python = os.environ.get("FASTAMQP_ORIGINAL_PYTHON")
    if not python:
        if os.environ.get("CI"):
            pytest.fail("FASTAMQP_ORIGINAL_PYTHON is not set: scripts/test sets it")
        pytest.skip("FASTAMQP_ORIGINAL_PYTHON is not set (scripts/test sets it up)")

    def run(script, request):
        # Without PYTHONPATH: a source tree on it would show the original driver a
        # second 'amqp' entry point (ours, via fastamqp.egg-info).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        result = subprocess.run([python, os.path.join(ORIGINAL_DIR, script)],
                                input=json.dumps(request), capture_output=True,
                                text=True, timeout=120, env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)
    return run


@pytest.fixture
def router():
    """The embedded intermediary as a qdrouterd-like router, for one test."""
    from fastamqp.intermediary import Intermediary
    with Intermediary(mode="router") as im:
        yield im


@pytest.fixture
def broker():
    """The embedded intermediary as a qpidd-like broker, for one test."""
    from fastamqp.intermediary import Intermediary
    with Intermediary(mode="broker") as im:
        yield im
