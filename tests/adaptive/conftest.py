import pytest
import torch

from lowbit.adaptive import make_adaptive
from lowbit.models import build_model

B = (8, 6, 4, 2)


@pytest.fixture
def model():
    """The default small CNN, narrow, switchable among B = {8, 6, 4, 2}."""
    torch.manual_seed(0)
    return make_adaptive(build_model("small_cnn", num_classes=10, in_channels=1, width=8), B)


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(32, 1, 8, 8, generator=generator), torch.randint(0, 10, (32,),
                                                                        generator=generator)
