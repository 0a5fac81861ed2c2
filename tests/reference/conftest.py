"""Every reference test runs twice: on the fused CPU kernels and on the eager formulas
(the autouse fixture of ``tests/quant/conftest.py``), on one thread: the tensors are a few
hundred elements, where thread hand-offs cost more than the work (16 ms instead of 0.3 ms
for one reduction on a busy two-core machine)."""

import pytest
import torch

from lowbit.quant import native


@pytest.fixture(autouse=True, params=["native", "eager"])
def kernel_path(request, monkeypatch):
    if request.param == "native" and native.library() is None:
        pytest.skip("the CPU kernels are not built here (no C compiler)")
    if request.param == "eager":
        monkeypatch.setattr(native, "usable", lambda *tensors: False)
    return request.param


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
