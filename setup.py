"""setup.py: the build step that pyproject.toml cannot express declaratively.

It decides whether fastamqp is built with its C extension or as pure Python
(``FASTAMQP_PUREPYTHON=1``), and builds the extension by running CMake on
CMakeLists.txt (which finds Proton C and cythonizes the ``.pyx`` modules).

Environment:
  FASTAMQP_PUREPYTHON=1   no extension: the pure-Python engine only
  FASTAMQP_DEBUG=1        debug build (-O0 -g, CYTHON_TRACE, annotated HTML)
  FASTAMQP_SANITIZE=...   sanitizer for the extension, e.g. ``address``
"""
import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
# The Cython modules CMakeLists.txt builds (fastamqp_cython_module calls).
C_MODULES = ["_core", "engine.c._io", "intermediary._relay"]


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class CMakeExtension(Extension):
    """An extension module whose sources CMake knows; setuptools only places it."""

    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extensions(self):
        cmake = shutil.which("cmake")
        if cmake is None:
            sys.exit("fastamqp: cmake is needed to build the C extension "
                     "(pip install cmake, or apt-get install cmake); "
                     "or set FASTAMQP_PUREPYTHON=1 for the pure-Python engine")
        build_type = "Debug" if _flag("FASTAMQP_DEBUG") else "Release"
        build_dir = os.path.join(os.path.abspath(self.build_temp), "cmake")
        # CMake installs the modules here; setuptools then copies them to the
        # paths it expects for each extension.
        stage = os.path.join(build_dir, "stage")
        configure = [
            cmake, "-S", HERE, "-B", build_dir,
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_INSTALL_PREFIX={stage}",
            f"-DFASTAMQP_DEBUG={'ON' if _flag('FASTAMQP_DEBUG') else 'OFF'}",
            f"-DFASTAMQP_SANITIZE={os.environ.get('FASTAMQP_SANITIZE', '')}",
        ]
        subprocess.check_call(configure)
        subprocess.check_call([cmake, "--build", build_dir, "--parallel",
                               str(os.cpu_count() or 1)])
        subprocess.check_call([cmake, "--install", build_dir])
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        for ext in self.extensions:
            built = os.path.join(stage, *ext.name.split(".")[:-1],
                                 ext.name.split(".")[-1] + suffix)
            target = self.get_ext_fullpath(ext.name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(built, target)
        print(f"fastamqp: built the C extension ({build_type}): "
              f"{', '.join(C_MODULES)}")


if _flag("FASTAMQP_PUREPYTHON"):
    print("fastamqp: FASTAMQP_PUREPYTHON=1, building the pure-Python engine only "
          "(no C fast path)")
    ext_modules = []
else:
    ext_modules = [CMakeExtension(f"fastamqp.{m}") for m in C_MODULES]

setup(ext_modules=ext_modules, cmdclass={"build_ext": CMakeBuild})
