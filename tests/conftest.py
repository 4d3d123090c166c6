"""Test-suite wide settings.

Every Ray cluster a test starts is its own, on loopback, in its own temp dir.
Ray 2.5x enables token authentication for a new cluster when a token file
exists in ~/.ray, and concurrent clusters would race on that one file; the
suite's clusters therefore run with authentication explicitly off (see
cluster/deploy/localray.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import structlog

from cluster.deploy.localray import LOCAL_AUTH_ENV

os.environ.update(LOCAL_AUTH_ENV)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI and ``configure_logging`` set logging up process-wide: put structlog and
    the root logger back afterwards (closing the handlers the test added), so later
    tests see the defaults."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
