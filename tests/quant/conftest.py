"""Every quantizer test runs twice: on the fused CPU kernels and on the eager formulas."""

import pytest

from lowbit.quant import native


@pytest.fixture(autouse=True, params=["native", "eager"])
def kernel_path(request, monkeypatch):
    if request.param == "native" and native.library() is None:
        pytest.skip("the CPU kernels are not built here (no C compiler)")
    if request.param == "eager":
        monkeypatch.setattr(native, "usable", lambda *tensors: False)
    return request.param
