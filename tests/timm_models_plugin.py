"""pytest plugin that runs timm's own ``tests/test_models.py`` on the Vision-RWKV models.

``tests/test_timm_contract.py`` loads it (``pytest -p timm_models_plugin``) in a subprocess, before timm's
test module is collected. That module builds its parametrisations at import time from
``timm.list_models(...)`` and ``timm.list_pretrained(...)``; this plugin registers our models
(``import vision_rwkv``) and narrows those two functions to ``vrwkv*`` names, so that every per-model test
of timm runs on the VRWKV models, under timm's own filters:

* our models stand where timm puts its ViT: a filter list that names ``vit_*`` (``NON_STD_FILTERS``:
  transformers whose ``forward_features`` returns tokens) also names ``vrwkv*``, and a module list that
  names ``vision_transformer`` (``FEAT_INTER_FILTERS``: models with ``forward_intermediates``) also names
  our modules ``vrwkv`` and ``vrwkv6``;
* timm's size rules apply unchanged: ``EXCLUDE_FILTERS`` (by name, e.g. '*enormous*', '*_5b_*': none of
  ours) and the "Fixed input size model > limit." skips of the tests whose input-size limit is below a
  model's fixed input size (VRWKV-L/384 in the backward, fx, feature and config tests, as ViT-L/384).

Tests of timm's own named models (``test_reset_classifier_keeps_pool[resnet18]`` and such) are
deselected, as are the tests that need the network (pretrained downloads) or TorchScript.
``VRWKV_TIMM_MODELS`` (comma-separated names) narrows the models further; ``VRWKV_TEST_SEED`` seeds each test;
``TIMEOUT`` (timm's variable for its per-test limits) also replaces the limits timm hard-codes (fx 120 s,
pruning 240 s), which VRWKV-L exceeds on a shared 2-core CPU.
"""
import fnmatch
import inspect
import os
import random
from typing import List

import pytest
import timm
import torch

if not torch.cuda.is_available():  # as tests/conftest.py: Triton decides at decoration
    os.environ.setdefault('TRITON_INTERPRET', '1')

import vision_rwkv  # noqa: E402  (registers the models)

OUR_MODELS = os.environ.get('VRWKV_TIMM_MODELS', 'vrwkv*').split(',')
OUR_MODULES = [m.__name__.split('.')[-1] for m in (vision_rwkv.models.vrwkv, vision_rwkv.models.vrwkv6)]
NEEDS_NETWORK = ('test_model_inference', 'test_model_load_pretrained', 'test_model_features_pretrained')
SEED = int(os.environ.get('VRWKV_TEST_SEED', random.SystemRandom().randrange(2 ** 31)))

_list_models = timm.list_models
_list_pretrained = timm.list_pretrained


def _with_ours(patterns, vit_pattern: str, ours: List[str]):
    """``patterns`` plus ``ours`` where the list names ``vit_pattern``."""
    if isinstance(patterns, (list, tuple)) and vit_pattern in patterns:
        return [*patterns, *ours]
    return patterns


def _is_ours(name: str) -> bool:
    """``name`` (with or without a pretrained tag) is one of the selected VRWKV models."""
    return any(fnmatch.fnmatch(name.split('.')[0], pattern) for pattern in OUR_MODELS)


def _ours(names):
    return [n for n in names if _is_ours(n)]


def list_models(*args, **kwargs):
    """``timm.list_models`` restricted to our models, which take ViT's place in timm's filter lists."""
    bound = inspect.signature(_list_models).bind(*args, **kwargs)
    for arg in ('filter', 'exclude_filters'):
        if arg in bound.arguments:
            bound.arguments[arg] = _with_ours(bound.arguments[arg], 'vit_*', ['vrwkv*'])
    if 'module' in bound.arguments:
        bound.arguments['module'] = _with_ours(bound.arguments['module'], 'vision_transformer', OUR_MODULES)
    return _ours(_list_models(*bound.args, **bound.kwargs))


def list_pretrained(*args, **kwargs):
    return _ours(_list_pretrained(*args, **kwargs))


timm.list_models = list_models
timm.list_pretrained = list_pretrained


def pytest_report_header(config):
    return f'timm {timm.__version__} model tests on {len(list_models())} VRWKV models, seed {SEED}'


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(SEED)
    random.seed(SEED)


def _runs_here(item) -> bool:
    """A test of one of our models that needs neither the network nor TorchScript."""
    params = getattr(item, 'callspec', None)
    model_name = params.params.get('model_name') if params else None
    return (isinstance(model_name, str) and _is_ours(model_name)
            and item.originalname not in NEEDS_NETWORK and 'torchscript' not in item.originalname)


def pytest_collection_modifyitems(config, items):
    deselected = [item for item in items if not _runs_here(item)]
    items[:] = [item for item in items if _runs_here(item)]
    config.hook.pytest_deselected(items=deselected)
    if os.environ.get('TIMEOUT'):  # also for the tests whose limit timm hard-codes (fx: 120 s, pruning: 240 s)
        for item in items:
            item.add_marker(pytest.mark.timeout(int(os.environ['TIMEOUT'])), append=False)
