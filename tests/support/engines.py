"""The connection engines every engine test runs on: the pure-Python reference and,
when it is built, the C engine. The C engine must pass each test unchanged.

scripts/test runs the suite twice. The C install runs every engine test on both
engines; the pure-Python install (no extension) then sets FASTAMQP_ENGINE_TESTS_DONE=1
and leaves these parametrized tests out rather than run the [python] half again: what
it adds is the driver, interop and functional tests without the extension.
"""
import os

import pytest

from fastamqp.engine.pure import connection as pure_connection
from fastamqp.engine import c_connection

ENGINE_TESTS_DONE = os.environ.get("FASTAMQP_ENGINE_TESTS_DONE") == "1"

ENGINES = [pytest.param(pure_connection.Connection, id="python")]
if c_connection is not None:
    ENGINES.append(pytest.param(c_connection, id="c"))
if ENGINE_TESTS_DONE:
    ENGINES = [pytest.param(None, id="done", marks=pytest.mark.skip(
        reason="FASTAMQP_ENGINE_TESTS_DONE=1: run on both engines in the C install"))]

# The same engines for a child process (an oslo.messaging program run as a
# subprocess, e.g. ombt), chosen the way users choose: FASTAMQP_PUREPYTHON in its
# environment. Pass the parameter to child_env().
CHILD_ENGINES = [pytest.param("python", id="python")]
if c_connection is not None:
    CHILD_ENGINES.append(pytest.param("c", id="c"))
if ENGINE_TESTS_DONE:
    CHILD_ENGINES = [pytest.param(None, id="done", marks=pytest.mark.skip(
        reason="FASTAMQP_ENGINE_TESTS_DONE=1: run on both engines in the C install"))]


def child_env(engine, **extra):
    """This process's environment for a child on ``engine`` ("c" or "python")."""
    env = {k: v for k, v in os.environ.items() if k != "FASTAMQP_PUREPYTHON"}
    if engine == "python":
        env["FASTAMQP_PUREPYTHON"] = "1"
    env.update(extra)
    return env
