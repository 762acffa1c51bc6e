"""Test setup: Triton runs in its interpreter on machines without CUDA; fresh random inputs each run.

TRITON_INTERPRET must be set before the kernels module is imported (Triton decides at decoration).
The session seed is printed in the report header; set VRWKV_TEST_SEED to replay a failing run.
"""
import os
import random
from typing import Optional

import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

import pytest  # noqa: E402

SEED = int(os.environ.get('VRWKV_TEST_SEED', random.SystemRandom().randrange(2 ** 31)))


def pytest_addoption(parser):
    parser.addoption('--timm-models', action='store_true',
                     help="also run timm's per-model tests on every VRWKV model (about 17 minutes on 2 idle CPU cores)")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``timm_models`` run only with ``--timm-models``; otherwise they are deselected (reported
    as such), so that neither tier of the suite runs them."""
    if config.getoption('--timm-models'):
        return
    deselected = [item for item in items if item.get_closest_marker('timm_models')]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker('timm_models')]


def pytest_report_header(config):
    return f'vision_rwkv test seed: {SEED} (VRWKV_TEST_SEED={SEED} to replay)'


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(SEED)
    random.seed(SEED)
    yield


def rel_err(actual: torch.Tensor, expected: torch.Tensor, scale: Optional[torch.Tensor] = None) -> float:
    """||actual - expected|| / ||scale|| in float64, scale defaulting to expected (absolute error when it is
    zero). Pass the result computed with every term positive as ``scale`` where the terms of a sum cancel."""
    actual, expected = actual.detach().double(), expected.detach().double()
    denom = (expected if scale is None else scale.detach().double()).norm()
    diff = (actual - expected).norm()
    return float(diff / denom) if denom > 0 else float(diff)
