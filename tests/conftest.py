"""The suite's shared fixtures live in tests/support/fixtures.py, registered here.

pytest imports this file first (it is the root conftest, ``testpaths = tests``), with
tests/ put on ``sys.path`` (the default "prepend" import mode, tests/ being no package),
so ``support`` is importable by the time pytest imports the plugins named below. Test
modules import helpers from ``support.*``; they never import a conftest or a fixture.
"""

pytest_plugins = ["support.fixtures"]
