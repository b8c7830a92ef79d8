"""Fixtures of the MindSpore-facing tier: every test that takes them runs in both modes and on
both backends."""

import mindspore as ms
import pytest

from tests.cell.accum_models import BACKENDS, MODES


@pytest.fixture(params=list(MODES))
def mode(request):
    """Runs the test in GRAPH_MODE and in PYNATIVE_MODE (restoring the previous mode)."""
    before = ms.get_context("mode")
    ms.set_context(mode=MODES[request.param])
    yield request.param
    ms.set_context(mode=before)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Runs the test with our fused kernels and with MindSpore's own operators."""
    return request.param
