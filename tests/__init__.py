"""The test suite.

The helper modules below assert things on the tests' behalf: pytest rewrites
their asserts, as it does the tests', so that a failing one shows the values
it compared. They must be registered before anything imports them, and this
package is imported first (by the root ``conftest.py`` and by
``tests/conftest.py`` alike). Worker subprocesses import the package too (for
``tests.worker_app``): they run without pytest, and register nothing.
"""

import sys

if "pytest" in sys.modules:
    import pytest

    pytest.register_assert_rewrite("tests.support", "tests.lock_scenarios", "tests.topologies", "tests.rabbitmq")
