"""Shared fixtures and the tiers.

Tiers: each folder of tests/ is one tier, and every test in it gets the tier's marker
(``pytest_collection_modifyitems`` below; the markers are registered in pyproject.toml):
unit, engine, driver, interop, intermediary, fuzz, soak, benchmarks. ``-m engine`` runs
one tier, ``-m "not fuzz"`` leaves one out (tests/README.md). Helpers and shared
fixtures live in the ``support`` package, never in a test module.

Engines: ONE selection (tests/support/engines.py). The ``engine`` fixture is
parametrized over the engines of this install (``python``, and ``c`` unless
FASTAMQP_PUREPYTHON=1); without FASTAMQP_PUREPYTHON a missing C engine is a failure
naming its import error, never a skip. It puts its engine in place as
``fastamqp.engine.Connection`` for the test, so that the driver (and ``fastamqp
check``) build it. The ``codec`` fixture is the same selection for the codec tests.

Hypothesis profiles (select with ``HYPOTHESIS_PROFILE=<name>``):
  default   100 examples per test, no deadline (the first C call may be slow)
  quick     10 examples (e.g. under valgrind)
  long      2000 examples, for soak runs
"""
import os

import pytest
from hypothesis import HealthCheck, settings

import fastamqp.engine
from support import engines

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

TIERS = ("unit", "engine", "driver", "interop", "intermediary", "fuzz", "soak",
         "benchmarks")
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    """The tier marker of each test, from the folder it is in."""
    for item in items:
        rel = os.path.relpath(str(item.path), TESTS_DIR)
        tier = rel.split(os.sep, 1)[0]
        if tier in TIERS:
            item.add_marker(tier)


@pytest.fixture(params=engines.params())
def engine(request, monkeypatch):
    """The connection engine for this test (a support.engines.Engine: ``.name``,
    ``.connection``, ``.codec``, ``.child_env()``), also installed as
    ``fastamqp.engine.Connection`` for the test."""
    eng = request.param
    monkeypatch.setattr(fastamqp.engine, "Connection", eng.connection)
    return eng


# Session scope: hypothesis refuses function-scoped fixtures in @given tests, and the
# codec modules are stateless from the tests' point of view. Not subject to
# FASTAMQP_ENGINE_TESTS_DONE: the codec tests keep their [python] half in the pure run.
@pytest.fixture(scope="session", params=engines.params(honour_done=False))
def codec(request):
    return request.param.codec


@pytest.fixture(scope="session")
def both_codecs():
    """(c, python) for differential tests."""
    if engines.PUREPYTHON:
        pytest.skip("FASTAMQP_PUREPYTHON=1: there is no C engine in this install")
    return engines.require_c("c_codec"), fastamqp.engine.py_codec


ORIGINAL_DIR = os.path.join(TESTS_DIR, "support", "original")


@pytest.fixture(scope="session")
def original():
    """Run a script of tests/support/original/ with the ORIGINAL driver's Python
    (oslo.messaging 14.9.3, made by scripts/setup-env-original; scripts/test sets
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
