"""Both engines in a process monkey-patched by eventlet (as most services of the
original's day ran, and as oslo.messaging's own functional tests still do): a listener
blocked in poll() with no timeout wakes when it is stopped, and an RPC server on the
eventlet executor stops promptly. Each engine runs in a child process."""
import os
import subprocess
import sys

import pytest


CHILD = os.path.join(os.path.dirname(__file__), "eventlet_child", "stop_listener.py")


def test_stopping_a_listener_under_eventlet(engine, broker):
    pytest.importorskip("eventlet")
    result = subprocess.run([sys.executable, CHILD, str(broker.port)],
                            env=engine.child_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.startswith("ok"), result.stdout
    expected = "engine.pure" if engine.name == "python" else "engine.c"
    assert expected in result.stdout, result.stdout
