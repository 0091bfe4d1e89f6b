"""The connection engines every engine test runs on: the pure-Python reference and,
when it is built, the C engine. The C engine must pass each test unchanged."""
import pytest

from fastamqp._pure import connection as pure_connection
from fastamqp.engine import c_connection

ENGINES = [pytest.param(pure_connection.Connection, id="python")]
if c_connection is not None:
    ENGINES.append(pytest.param(c_connection, id="c"))
