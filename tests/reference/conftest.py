"""Every reference test runs twice: on the fused CPU kernels and on the eager formulas
(``kernel_path`` in ``tests/conftest.py``), on one thread: the tensors are a few
hundred elements, where thread hand-offs cost more than the work (16 ms instead of 0.3 ms
for one reduction on a busy two-core machine)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def every_kernel_path(kernel_path):  # tests/conftest.py
    return kernel_path


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
