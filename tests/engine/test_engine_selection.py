"""Which engine runs: C unless FASTAMQP_PUREPYTHON=1, and never a silent fallback."""
import os
import pathlib
import subprocess
import sys

import fastamqp
from fastamqp import engine


def _run(code, **env_overrides):
    env = dict(os.environ)
    env.pop("FASTAMQP_PUREPYTHON", None)
    env.update(env_overrides)
    # Import the same copy of fastamqp as this test process (source tree or install).
    root = str(pathlib.Path(fastamqp.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code],
                         env=env, cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_c_engine_present():
    if engine.PUREPYTHON:
        assert fastamqp.engine_name() == "python"
        assert engine.c_codec is None
        return
    # A C-engine install must run the C engine; a missing or broken extension is a
    # failure here, not a skip.
    assert engine.c_import_error is None, f"fastamqp._core failed to import: " \
                                          f"{engine.c_import_error!r}"
    assert fastamqp.engine_name() == "c"
    assert engine.codec is engine.c_codec
    from fastamqp import codec
    assert codec.IMPLEMENTATION == "c"


def test_purepython_env_selects_python():
    code = ("import fastamqp, fastamqp.engine as e, fastamqp.codec as c; "
            "print(fastamqp.engine_name(), e.c_codec is None, c.IMPLEMENTATION)")
    for value in ("1", "true", "yes", "ON"):
        assert _run(code, FASTAMQP_PUREPYTHON=value) == "python True python"


def test_default_env_selects_c():
    if engine.PUREPYTHON:
        import pytest
        pytest.skip("FASTAMQP_PUREPYTHON=1: the C engine is not installed in this run")
    code = "import fastamqp; print(fastamqp.engine_name())"
    # -W error::RuntimeWarning: the "C extension is not available" warning would fail
    assert _run(code) == "c"
    assert _run(code, FASTAMQP_PUREPYTHON="0") == "c"


def test_loading_the_options_loads_no_engine():
    # oslo-config-generator loads fastamqp.opts through its entry point: that must not
    # load pyngus, Proton or a C extension (issue 16).
    code = ("import sys, fastamqp, fastamqp.opts as o; o.list_opts(); "
            "import fastamqp.engine.interface, fastamqp.engine.policy; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pyngus', 'proton', 'cproton') or m in ('fastamqp._core', "
            "'fastamqp.engine.c._io', 'fastamqp.engine.pure.connection', "
            "'fastamqp.engine.c.connection')))")
    assert _run(code) == "[]"


def test_engine_name_reports_the_connection_engine():
    # With the C codec importable but the C connection engine not, the pure connection
    # engine runs, and engine_name() says so (it used to report the codec).
    if engine.PUREPYTHON:
        import pytest
        pytest.skip("FASTAMQP_PUREPYTHON=1: the C engine is not installed in this run")
    code = ("import sys, warnings; sys.modules['fastamqp.engine.c._io'] = None; "
            "warnings.simplefilter('ignore'); "
            "import fastamqp, fastamqp.engine as e; "
            "print(fastamqp.engine_name(), e.codec.IMPLEMENTATION, "
            "e.Connection is e.py_connection, isinstance(e.c_import_error, ImportError))")
    assert _run(code) == "python c True True"
