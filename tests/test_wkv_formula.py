"""The Bi-WKV formula of the models: chosen by the checkpoint (official ones: the official kernels'
arithmetic; ours record theirs in ``wkv_formula_id``), overridable in both directions, clear errors."""
import pytest
import timm
import torch

import vision_rwkv  # noqa: F401  (registers the models)
from vision_rwkv.models import checkpoint_filter_fn

from conftest import rel_err

TINY = dict(embed_dim=32, depth=2, img_size=64)


def tiny(name='vrwkv_tiny_patch16_224', **kwargs):
    return timm.create_model(name, **dict(TINY, **kwargs)).eval()


def official_format(model):
    """An mmcls-format checkpoint (as released: no wkv_formula_id) of ``model``'s weights."""
    return {'state_dict': {('head.fc.' + k[5:] if k.startswith('head.') else 'backbone.' + k): v
                           for k, v in model.state_dict().items() if k != 'wkv_formula_id'}}


def test_fresh_models_run_eq5_and_record_it():
    model = tiny()
    assert model.wkv_formula == 'paper' and int(model.wkv_formula_id) == 0
    assert all(block.att.wkv_formula == 'paper' for block in model.layers)


@pytest.mark.parametrize('formula', ['paper', 'official'])
def test_own_checkpoints_restore_their_formula(tmp_path, formula):
    source = tiny(wkv_formula=formula)
    path = tmp_path / 'ours.pth'
    torch.save(source.state_dict(), path)
    loaded = tiny(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert loaded.wkv_formula == formula
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_official_checkpoints_select_the_official_formula(tmp_path):
    source = tiny()
    path = tmp_path / 'official.pth'
    torch.save(official_format(source), path)
    assert tiny(pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).wkv_formula == 'official'
    model = tiny()
    model.load_state_dict(checkpoint_filter_fn(torch.load(path, weights_only=True), model))
    assert model.wkv_formula == 'official' and int(model.wkv_formula_id) == 1


@pytest.mark.parametrize('given,recorded', [('paper', 'official'), ('official', 'paper')])
def test_a_formula_given_to_the_constructor_wins(tmp_path, given, recorded):
    path = tmp_path / 'ckpt.pth'
    torch.save(tiny(wkv_formula=recorded).state_dict(), path)
    model = tiny(wkv_formula=given, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert model.wkv_formula == given and int(model.wkv_formula_id) == ('paper', 'official').index(given)


def test_the_formula_changes_the_output():
    """Same weights, other arithmetic: at T = 16 tokens the two operators differ by ~1e-2 (DESIGN.md §2)."""
    paper = tiny()
    official = tiny(wkv_formula='official')
    official.load_state_dict(paper.state_dict())
    assert official.wkv_formula == 'official'
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(official.forward_features(x), paper.forward_features(x)) > 1e-5


def test_grid_modes_refuse_an_official_checkpoint_unless_told(tmp_path):
    path = tmp_path / 'official.pth'
    torch.save(official_format(tiny()), path)
    with pytest.raises(ValueError, match="trained with wkv_formula='official'.*wkv_mode='cross'.*wkv_formula='paper'"):
        tiny('vrwkvcross_tiny_patch16_224', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    model = tiny('vrwkvcross_tiny_patch16_224', wkv_formula='paper', pretrained=True,
                 pretrained_cfg_overlay=dict(file=str(path)))
    assert model.wkv_formula == 'paper'
    with pytest.raises(ValueError, match="wkv_mode='raster' only"):
        tiny('vrwkv2d_tiny_patch16_224', wkv_formula='official')


def test_unknown_formulas_are_refused(tmp_path):
    with pytest.raises(ValueError, match='wkv_formula must be one of'):
        tiny(wkv_formula='cuda')
    state = tiny().state_dict()
    state['wkv_formula_id'] = torch.tensor(7, dtype=torch.uint8)
    with pytest.raises(ValueError, match='names no Bi-WKV formula'):
        tiny().load_state_dict(state)
