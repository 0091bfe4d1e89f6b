"""The engines the tests run on: ONE selection for the whole suite.

``params()`` is what the ``engine`` fixture (tests/conftest.py) is parametrized with,
and the ``codec`` fixture too:

* the C install (no ``FASTAMQP_PUREPYTHON``): ``python`` and ``c``. A C engine that
  does not import is a FAILURE of every ``[c]`` test, naming the import error -- never
  a silent skip, never a shorter list;
* the pure install (``FASTAMQP_PUREPYTHON=1``): ``python`` only.

scripts/test runs the suite twice. The C install runs every engine test on both
engines; the pure-Python install then sets ``FASTAMQP_ENGINE_TESTS_DONE=1``, and the
tests parametrized by the ``engine`` fixture are skipped there rather than run the
``[python]`` half again: what that run adds is everything else without the extension
(the driver, interop and functional tests that do not choose an engine, and the codec
tests, which keep their ``[python]`` half: ``params(honour_done=False)``).

A child process (an oslo.messaging program run as a subprocess, e.g. ombt) is put on
an engine the way users choose one: ``FASTAMQP_PUREPYTHON`` in its environment
(``Engine.child_env()``).
"""
import dataclasses
import os

import pytest

from fastamqp import engine as _engine

PUREPYTHON = _engine.PUREPYTHON
ENGINE_TESTS_DONE = os.environ.get("FASTAMQP_ENGINE_TESTS_DONE") == "1"
DONE_REASON = "FASTAMQP_ENGINE_TESTS_DONE=1: run on both engines in the C install"
NAMES = ("python",) if PUREPYTHON else ("python", "c")


@dataclasses.dataclass(frozen=True)
class Engine:
    """One engine: its name (the test id), its connection class and its codec."""
    name: str

    @property
    def connection(self):
        """The connection class (what the driver builds as fastamqp.engine.Connection)."""
        if self.name == "python":
            return _engine.py_connection
        return require_c("c_connection")

    @property
    def codec(self):
        if self.name == "python":
            return _engine.py_codec
        return require_c("c_codec")

    def child_env(self, **extra):
        return child_env(self.name, **extra)

    def __str__(self):
        return self.name


def require_c(attribute):
    """``fastamqp.engine.<attribute>`` of the C engine; fail (never skip) if it is
    missing from an install that should have it."""
    value = getattr(_engine, attribute)
    if value is None:
        pytest.fail(f"the C engine (fastamqp.engine.{attribute}) is not importable: "
                    f"{_engine.c_import_error!r}; build it, or set FASTAMQP_PUREPYTHON=1 "
                    f"to test the pure-Python engine only", pytrace=False)
    return value


def params(honour_done=True):
    """pytest.param per engine of this install, id = the engine's name."""
    done = honour_done and ENGINE_TESTS_DONE
    marks = [pytest.mark.skip(reason=DONE_REASON)] if done else []
    return [pytest.param(Engine(name), id=name, marks=marks) for name in NAMES]


def by_name(name):
    """The Engine called ``name``, e.g. in a child process given it on its command line."""
    return Engine(name)


def child_env(engine, **extra):
    """This process's environment for a child on ``engine`` ("c" or "python")."""
    env = {k: v for k, v in os.environ.items() if k != "FASTAMQP_PUREPYTHON"}
    if str(engine) == "python":
        env["FASTAMQP_PUREPYTHON"] = "1"
    env.update(extra)
    return env
