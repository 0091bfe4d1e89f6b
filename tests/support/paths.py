"""Where things are: the tests directory and the source tree beside it (the suite
imports the INSTALLED fastamqp; these paths are for the scripts, benchmarks and build
files it drives)."""
import os

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS)
BENCHMARKS = os.path.join(ROOT, "benchmarks")
SCRIPTS = os.path.join(ROOT, "scripts")
ORIGINAL = os.path.join(TESTS, "support", "original")
