"""Deprecated: the backend choice moved to :mod:`mindspore_accum.backends` (0.2.1's module name,
kept for one release)."""

import warnings

from .backends import BACKENDS, choose_backend, kernels_unavailable_reason

__all__ = ["BACKENDS", "kernels_unavailable_reason", "choose_backend"]

warnings.warn(
    "mindspore_accum.backend is deprecated and will be removed in the next release; "
    "import from mindspore_accum.backends (same names)",
    DeprecationWarning,
    stacklevel=2,
)
