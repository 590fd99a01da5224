import os
import sys

import torch

# the analytic oracle module sits beside the tests
sys.path.insert(0, os.path.dirname(__file__))

# The suite runs under pytest-xdist with one worker per core; more intra-op threads per worker only
# oversubscribe the cores (measured: 20x slower element-wise loops when two workers each use two).
torch.set_num_threads(1)
