import glob
import os

import pytest

import debtools


@pytest.fixture(scope="session")
def deb():
    """The package, built once for every file of tests/package. POSTERN_DEB_REUSE=1
    takes the one a previous run left in POSTERN_DEB_WORKDIR (when iterating on
    the tests themselves; CI always builds)."""
    if os.environ.get("POSTERN_DEB_REUSE"):
        found = glob.glob(os.path.join(debtools.WORK, f"postern_{debtools.version()}_amd64.deb"))
        if found:
            return found[0]
    return debtools.build_deb()
