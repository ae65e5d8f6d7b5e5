"""Shared test setup.

The networks in these tests are tiny: one intra-op thread is much faster than several, and on a
busy 2-core machine multi-threaded kernels spin against other processes (10x slower). Subprocesses
started by the tests (the CLI tests) inherit OMP_NUM_THREADS.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
