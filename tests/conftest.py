"""Test-suite wide settings.

Every Ray cluster a test starts is its own, on loopback, in its own temp dir.
Ray 2.5x enables token authentication for a new cluster when a token file
exists in ~/.ray, and concurrent clusters would race on that one file; the
suite's clusters therefore run with authentication explicitly off (see
cluster/deploy/localray.py).
"""

from __future__ import annotations

import os

from cluster.deploy.localray import LOCAL_AUTH_ENV

os.environ.update(LOCAL_AUTH_ENV)
