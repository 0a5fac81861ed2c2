"""The battery covers the registry: a method added without a reference fails here."""

import lowbit

COVERED = {
    "apot", "pot", "uniform", "maxscale",  # test_reference_apot
    "lloyd",  # test_reference_lloyd
    "uniq", "lsq",  # test_reference_uniform
    "pact", "dorefa", "coquant",  # test_reference_pact
    "rq", "srq", "srq-dropbits",  # test_reference_relaxed
}


def test_every_registered_method_has_a_reference():
    assert set(lowbit.available_methods()) <= COVERED


def test_every_input_quantizer_takes_signed():
    """The spec: every method with an input quantizer accepts ``signed`` (maxscale is
    weight-only)."""
    for name in lowbit.available_methods():
        method = lowbit.get_method(name)
        if method.input_quantizer is None:
            assert name == "maxscale"
            continue
        for signed in (False, True):
            method.input_quantizer(method.min_bits, signed=signed)
