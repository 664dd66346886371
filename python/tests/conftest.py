"""pytest configuration of qmm's Python tests.

The suite tests the *installed* package (`pip install .`), never python/qmm directly: this
directory has no __init__.py, so pytest puts python/tests (not python/) on sys.path and
`import qmm` finds the installed package.
"""

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)
