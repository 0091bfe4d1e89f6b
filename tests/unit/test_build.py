"""The build's promises: a clear error without Proton C, and a working debug build.

These drive CMakeLists.txt directly from the source tree (the suite runs beside it).
"""
import os
import shutil
import subprocess
import sys

import pytest

from support import paths

ROOT = paths.ROOT
CMAKE = shutil.which("cmake")

pytestmark = pytest.mark.skipif(
    CMAKE is None or not os.path.exists(os.path.join(ROOT, "CMakeLists.txt")),
    reason="needs cmake and the source tree (scripts/setup-env installs cmake)")


def _configure(tmp_path, *extra):
    return subprocess.run(
        [CMAKE, "-S", ROOT, "-B", str(tmp_path / "build"),
         f"-DPython_EXECUTABLE={sys.executable}", *extra],
        capture_output=True, text=True, timeout=300)


def test_missing_proton_names_the_package(tmp_path):
    # Hide both ways CMakeLists.txt finds Proton C.
    result = _configure(tmp_path, "-DCMAKE_DISABLE_FIND_PACKAGE_PkgConfig=ON",
                        "-DCMAKE_DISABLE_FIND_PACKAGE_Proton=ON")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Proton C (>= 0.37) was not found" in output
    assert "libqpid-proton11-dev" in output
    assert "FASTAMQP_PUREPYTHON=1" in output


@pytest.mark.c_only
@pytest.mark.skipif(os.environ.get("FASTAMQP_PUREPYTHON") == "1",
                    reason="the C build is not part of a FASTAMQP_PUREPYTHON=1 install")
def test_debug_build_traces_and_annotates(tmp_path):
    result = _configure(tmp_path, "-DFASTAMQP_DEBUG=ON")
    assert result.returncode == 0, result.stdout + result.stderr
    build = subprocess.run([CMAKE, "--build", str(tmp_path / "build"), "--target", "_core"],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    generated = tmp_path / "build" / "fastamqp"
    assert (generated / "_core.html").exists(), "the debug build writes Cython's annotation"
    c_source = (generated / "_core.c").read_text()
    assert "__Pyx_TraceLine" in c_source or "__Pyx_TraceCall" in c_source, \
        "the debug build compiles with line tracing"
