"""What the tests share: helpers and fixtures, never tests.

Test modules import from here (``from support import certs``,
``from support.engines import child_env``), never from each other. The top conftest
puts ``tests/`` on ``sys.path`` (pytest's rootdir-relative import), so ``support`` is
importable from every tier.
"""
