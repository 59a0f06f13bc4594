"""``python -m pipeline.bench point ...``: one scaling point in a child process."""

import sys

from .pipelines import _main

_main(sys.argv[1:])
