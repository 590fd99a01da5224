import os
import sys

# the analytic oracle module sits beside the tests
sys.path.insert(0, os.path.dirname(__file__))
