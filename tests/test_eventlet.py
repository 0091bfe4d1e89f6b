"""Both engines in a process monkey-patched by eventlet (as most services of the
original's day ran, and as oslo.messaging's own functional tests still do): a listener
blocked in poll() with no timeout wakes when it is stopped, and an RPC server on the
eventlet executor stops promptly. Each engine runs in a child process."""
import os
import subprocess
import sys

import pytest

from fastamqp.engine import c_connection
from fastamqp.intermediary import Intermediary

CHILD = os.path.join(os.path.dirname(__file__), "eventlet_child", "stop_listener.py")
ENGINES = [pytest.param({"FASTAMQP_PUREPYTHON": "1"}, id="python")]
if c_connection is not None:
    ENGINES.append(pytest.param({}, id="c"))


@pytest.mark.parametrize("env", ENGINES)
def test_stopping_a_listener_under_eventlet(env):
    pytest.importorskip("eventlet")
    child_env = {k: v for k, v in os.environ.items() if k != "FASTAMQP_PUREPYTHON"}
    child_env.update(env)
    with Intermediary(mode="broker") as im:
        result = subprocess.run([sys.executable, CHILD, str(im.port)], env=child_env,
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.startswith("ok"), result.stdout
    expected = "_pure" if env else "_cengine"
    assert expected in result.stdout, result.stdout
