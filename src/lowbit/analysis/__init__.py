"""Analysis of quantized models and quantizers: errors, sizes, diagnostics, plots."""
