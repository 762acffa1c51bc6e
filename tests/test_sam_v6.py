"""RWKV-SAM with VRWKV6 blocks in the encoder's token stage: the '*_v6' variants, shapes, gradients, the
predictors, and the paper's variants unchanged."""
import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from vision_rwkv.errors import CheckpointError
from vision_rwkv.models import Block, BlockV6
from vision_rwkv.sam import RWKVSamPredictor, build_rwkv_sam, rwkv_sam_model_registry
from vision_rwkv.sam.modeling.image_encoder import ENCODER_CONFIGS, ImageFeatures, build_image_encoder

V6_VARIANTS = ('tiny_v6', 'small_v6', 'base_v6')
IMG_SIZE = 128  # embedding 8×8, low-resolution masks 32×32


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the many small VRWKV6 operations lose much more to OpenMP synchronisation on 2
    shared cores than they gain (results do not depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_registry_has_v6_variants_and_keeps_the_paper_ones():
    for name in ('tiny', 'small', 'base'):
        v1, v6 = rwkv_sam_model_registry[name](img_size=64, depth=2), rwkv_sam_model_registry[f'{name}_v6'](
            img_size=64, depth=2)
        assert not v6.training and v6.image_encoder.img_size == 64
        assert all(type(b) is Block for b in v1.image_encoder.blocks)
        assert all(isinstance(b, BlockV6) for b in v6.image_encoder.blocks)
        dim = ENCODER_CONFIGS[name]['dim']
        assert v6.image_encoder.blocks[1].att.num_heads == dim // 64 and v6.image_encoder.embed_dim == dim
        # same stem, stages, neck and decoder: only the token-stage blocks differ
        differing = {k for k in v6.state_dict() if not k.startswith('image_encoder.blocks.')} ^ {
            k for k in v1.state_dict() if not k.startswith('image_encoder.blocks.')}
        assert not differing
        assert all(torch.equal(b.gamma1, torch.full_like(b.gamma1, 1e-2)) for b in v6.image_encoder.blocks)
        assert v6.image_encoder.blocks[0].ffn.key.out_features == 2 * dim  # MLP rate 2, as the paper's


# 14 VRWKV6 blocks of ~10·dim² weights each (Spatial Mix 5·dim² + low-rank maps, Channel Mix at rate 2 5·dim²)
PARAM_RANGES = {'tiny_v6': (6e6, 8.5e6), 'small_v6': (22e6, 28e6), 'base_v6': (85e6, 100e6)}


@pytest.mark.parametrize('variant', V6_VARIANTS)
def test_v6_encoder_shapes_and_parameter_counts(variant):
    model = build_image_encoder(variant, depth=2).eval()
    full = sum(p.numel() for p in build_image_encoder(variant, depth=14).parameters())
    low, high = PARAM_RANGES[variant]
    assert low < full < high
    cfg = ENCODER_CONFIGS[variant]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert isinstance(out, ImageFeatures)
    assert out.embedding.shape == (2, 256, 4, 6)
    assert out.stride4.shape == (2, cfg['widths'][0], 16, 24) and out.stride8.shape == (2, cfg['widths'][1], 8, 12)
    assert all(torch.isfinite(t).all() for t in out.maps())


def test_v6_encoder_gradients_reach_every_parameter():
    model = build_image_encoder('tiny_v6', depth=2)
    out = model(torch.randn(2, 3, 64, 64))
    sum((t * torch.randn_like(t)).sum() for t in out.maps()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_v6_encoder_float32_matches_float64():
    model = build_image_encoder('tiny_v6', depth=2, layer_scale_init=1.0).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out32 = model(x)
        out64 = model.double()(x.double())
    for a, b in zip(out32, out64):
        rel = ((a.double() - b).norm() / b.norm()).item()
        assert rel < 1e-4


@pytest.fixture(scope='module')
def sam_v6():
    torch.manual_seed(0)
    return rwkv_sam_model_registry['tiny_v6'](img_size=IMG_SIZE, depth=2)


def test_predictors_run_on_the_v6_model(sam_v6):
    image = np.random.default_rng(0).integers(0, 256, size=(60, 100, 3), dtype=np.uint8)
    ours, theirs = RWKVSamPredictor(sam_v6), SamPredictor(sam_v6)
    ours.set_image(image)
    theirs.set_image(image)
    prompt = dict(point_coords=np.array([[30., 20.]]), point_labels=np.array([1]), box=np.array([5, 5, 60, 50]))
    masks, scores, logits = ours.predict(**prompt, multimask_output=True)
    assert masks.shape == (3, 60, 100) and masks.dtype == bool
    assert scores.shape == (3,) and logits.shape == (3, 32, 32) and np.isfinite(logits).all()
    same_masks, same_scores, same_logits = theirs.predict(**prompt, multimask_output=True)
    np.testing.assert_array_equal(masks, same_masks)
    np.testing.assert_allclose(logits, same_logits, rtol=1e-5, atol=1e-5)


def test_v6_options_and_checkpoints_of_the_other_blocks(tmp_path):
    with pytest.raises(ValueError, match='raster order only'):
        build_rwkv_sam('tiny_v6', img_size=64, depth=1, wkv_mode='cross')
    with pytest.raises(ValueError, match="block must be one of \\['v1', 'v6'\\]"):
        build_image_encoder('tiny', block='v5')
    path = tmp_path / 'tiny_v1.pth'
    torch.save(rwkv_sam_model_registry['tiny'](img_size=64, depth=1).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"image encoder 'tiny' \(1 VRWKV blocks of dim 192\), but this model's "
                                              r"is 'tiny_v6' \(1 VRWKV6 blocks of dim 192\)"):
        rwkv_sam_model_registry['tiny_v6'](checkpoint=str(path), img_size=64, depth=1)
    # the v6 encoder through the block argument is the 'tiny_v6' variant
    a = build_rwkv_sam('tiny', img_size=64, depth=1, block='v6')
    assert a.state_dict().keys() == rwkv_sam_model_registry['tiny_v6'](img_size=64, depth=1).state_dict().keys()
