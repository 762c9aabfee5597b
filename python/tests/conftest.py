"""pytest setup: test the etap package of this checkout (python/etap), not an installed one.

libetap is found the package's usual way; set ETAP_LIBRARY=/path/to/libetap.so to choose.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_PARENT = os.path.dirname(HERE)
if PKG_PARENT not in sys.path:
    sys.path.insert(0, PKG_PARENT)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _poison_outputs():
    """Every output etap allocates starts as NaN, so an element the library never writes
    fails the 'finite or the expected +inf' checks instead of passing as stale memory."""
    from etap import _runtime

    old = _runtime.poison_outputs
    _runtime.poison_outputs = True
    yield
    _runtime.poison_outputs = old
