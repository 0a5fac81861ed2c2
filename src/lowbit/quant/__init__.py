"""Quantizers: pure tensor functions and the small modules that hold their parameters."""
