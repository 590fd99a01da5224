"""Shared set-up of the test suite.

Two ways to run it, both on 2 cores (pytest-xdist, one worker per core):

    python -m pytest -n 2                  # everything (what CI's .ci/run runs): ~1,530 tests, about 5 minutes
    python -m pytest -n 2 -m "not slow"    # the quick loop: ~1,640 tests, about 2 minutes

The quick subset leaves out the tests marked ``@pytest.mark.slow``: end-to-end app runs (each a
subprocess that imports torch and Hydra, trains and samples) and the users of their module-scoped
fixtures, long trainings and simulations, and the heavier parameter sets of tests whose light ones
stay in. Every test file keeps fast tests, and every module of ``sde_diffusion`` is still run (one
end-to-end run per kind of task stays in: cold diffusion, super-resolution, the autoencoder,
fine-tuning). Mark a new test slow when it takes more than about 2 seconds on one core and a
faster test already covers the same code; mark a new user of a slow module-scoped fixture slow too,
or the quick run pays for the fixture.
"""

import os
import sys

import torch

# the analytic oracle module sits beside the tests
sys.path.insert(0, os.path.dirname(__file__))

# The suite runs under pytest-xdist with one worker per core; more intra-op threads per worker only
# oversubscribe the cores (measured: 20x slower element-wise loops when two workers each use two).
torch.set_num_threads(1)
