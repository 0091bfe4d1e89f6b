"""The README's first command runs: a small `fastamqp demo`, both engines, nothing lost."""
import subprocess
import sys


def test_demo_runs_and_delivers_everything(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fastamqp.cli", "demo", "--calls", "20", "--casts", "30",
         "--notifications", "30"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "everything sent was delivered" in out.stdout
    assert "30/30" in out.stdout
