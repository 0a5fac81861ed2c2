"""Suite-wide test ordering."""

TORCHRUN_TESTS = ("test_distributed.py", "test_distributed_joint.py")


def pytest_collection_modifyitems(items):
    # The torchrun tests go first. Late in a full run, one of their 2-process gloo jobs has
    # twice aborted on CPU (SIGABRT, "terminate called without an active exception") while
    # passing alone and after the package's other tests; until that is understood, they run
    # before the rest.
    items.sort(key=lambda item: item.path.name not in TORCHRUN_TESTS)
