"""Soak, bounded for CI (issue 8, docs/reliability.md): scripts/soak pushes 20,000
messages (casts, calls, notifications) through oslo.messaging on the C engine, with the
intermediary in its own process, and fails if this process's RSS drifts more than 5 %
after warm-up or if anything is lost. The long run is ``scripts/soak`` (10^6)."""
import json
import os
import subprocess
import sys

import pytest

from fastamqp import engine
from support import paths

pytestmark = [pytest.mark.c_only, pytest.mark.soak]

ROOT = paths.ROOT


def test_soak_20000_messages_rss_stays_flat():
    if engine.c_connection is None:
        pytest.skip("the C engine is not available (FASTAMQP_PUREPYTHON=1 or not built)")
    # The fastamqp this run imports (the installed one under scripts/test).
    env = dict(os.environ, FASTAMQP_SOAK_NO_REEXEC="1")
    env.pop("FASTAMQP_PUREPYTHON", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "soak"), "--messages", "20000",
         "--sample", "1"], capture_output=True, text=True, timeout=180, env=env,
        cwd="/tmp")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    summary = json.loads(lines[-1])
    print("\nFIGURES soak:", lines[-1])
    assert summary["engine"] == "c"
    assert summary["lost"] == {"cast": 0, "note": 0} and summary["errors"] == 0, summary
    assert summary["samples_after_warmup"] >= 3, summary
    assert abs(summary["drift_max_pct"]) <= 5 and abs(summary["drift_min_pct"]) <= 5, \
        summary
    assert proc.returncode == 0 and summary["result"] == "pass", summary
