"""RWKV-SAM image encoder: shapes, scan modes, gradients, precision, input checks, MBConv blocks."""
import pytest
import torch
from timm.layers import DropPath

from conftest import rel_err
from vision_rwkv.sam.modeling.image_encoder import (
    ENCODER_CONFIGS, ImageFeatures, MBConv, RWKVSamImageEncoder, build_image_encoder)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_shapes(out: ImageFeatures, cfg: dict, B: int, H: int, W: int) -> None:
    assert isinstance(out, ImageFeatures)
    assert out.embedding.shape == (B, 256, H // 16, W // 16)
    assert out.stride4.shape == (B, cfg['widths'][0], H // 4, W // 4)
    assert out.stride8.shape == (B, cfg['widths'][1], H // 8, W // 8)
    assert all(torch.isfinite(t).all() for t in out.maps())


# dominated by 14 VRWKV blocks of ~9·dim² weights each (Spatial Mix 4·dim², Channel Mix at rate 2 5·dim²)
PARAM_RANGES = {'tiny': (4.5e6, 6.5e6), 'small': (18e6, 23e6), 'base': (74e6, 86e6)}


@pytest.mark.parametrize('variant', ['tiny', 'small', 'base'])
def test_output_shapes_and_parameter_counts(variant):
    model = build_image_encoder(variant).eval()
    assert model.img_size == 1024
    low, high = PARAM_RANGES[variant]
    assert low < num_params(model) < high
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128))
    check_shapes(out, ENCODER_CONFIGS[variant], 1, 128, 128)


def test_non_square_input_and_batch():
    model = build_image_encoder('tiny').eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    check_shapes(out, ENCODER_CONFIGS['tiny'], 2, 64, 96)


@pytest.mark.parametrize('mode', ['cross', '2d'])
def test_wkv_modes_run(mode):
    model = build_image_encoder('tiny', wkv_mode=mode).eval()
    assert all(block.att.wkv_mode == mode for block in model.blocks)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 96))
    check_shapes(out, ENCODER_CONFIGS['tiny'], 1, 64, 96)


def weighted_sum(out: ImageFeatures, weights) -> torch.Tensor:
    return sum((t * w).sum() for t, w in zip(out.maps(), weights))


def test_gradients_reach_every_parameter():
    model = build_image_encoder('tiny')
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    weighted_sum(out, [torch.randn_like(t) for t in out.maps()]).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_matches():
    model = build_image_encoder('tiny', depth=2)
    x = torch.randn(1, 3, 64, 64)
    out = model(x)
    weights = [torch.randn_like(t) for t in out.maps()]
    weighted_sum(out, weights).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_ckpt = model(x)
    weighted_sum(out_ckpt, weights).backward()
    for a, b in zip(out_ckpt, out):
        assert rel_err(a, b) < 1e-6
    for name, p in model.named_parameters():
        assert rel_err(p.grad, expected[name]) < 1e-5, name


def test_float32_matches_float64():
    # layer scale 1 so that the VRWKV branches weigh as much as the residual stream
    model = build_image_encoder('tiny', layer_scale_init=1.0).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out32 = model(x)
        out64 = model.double()(x.double())
    for a, b in zip(out32, out64):
        assert b.dtype == torch.float64
        assert rel_err(a, b) < 1e-4


def test_drop_path_rates_rise_linearly():
    model = build_image_encoder('tiny', drop_path_rate=0.2)
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    total = sum(ENCODER_CONFIGS['tiny']['depths']) + ENCODER_CONFIGS['tiny']['depth']
    assert len(rates) == total - 1  # the first block has rate 0 and no DropPath
    assert rates[-1] == pytest.approx(0.2)
    assert rates == sorted(rates)
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x).embedding, model(x).embedding)


def test_input_errors():
    model = build_image_encoder('tiny')
    with pytest.raises(ValueError, match='channels'):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='multiples of 16'):
        model(torch.randn(1, 3, 64, 72))
    with pytest.raises(ValueError, match='multiples of 16'):
        model(torch.randn(1, 3, 40, 64))
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match='variant'):
        build_image_encoder('huge')
    with pytest.raises(ValueError, match='at least one block'):
        RWKVSamImageEncoder(depths=(0, 4))


@pytest.mark.parametrize('in_chs, out_chs, stride, H, W', [
    (8, 8, 1, 10, 12),   # identity shortcut
    (8, 8, 2, 10, 12),   # average-pool shortcut
    (8, 16, 2, 10, 12),  # average pool + 1×1 conv
    (8, 16, 1, 10, 12),  # 1×1 conv only
    (8, 16, 2, 9, 11),   # odd sides: the pool rounds up like the stride-2 depth-wise conv
])
def test_mbconv_shapes_and_shortcut(in_chs, out_chs, stride, H, W):
    block = MBConv(in_chs, out_chs, stride)
    assert block.dwconv.stride == (stride, stride)
    assert block.expand.out_channels == 4 * out_chs
    assert isinstance(block.shortcut.pool, torch.nn.AvgPool2d) == (stride == 2)
    assert isinstance(block.shortcut.proj, torch.nn.Conv2d) == (in_chs != out_chs)
    x = torch.randn(2, in_chs, H, W)
    y = block(x)
    assert y.shape == (2, out_chs, -(-H // stride), -(-W // stride))
    # with the main path's projection zeroed the block is its shortcut
    torch.nn.init.zeros_(block.project.weight)
    torch.nn.init.zeros_(block.project.bias)
    expected = x
    if stride == 2:
        expected = torch.nn.functional.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
    if in_chs != out_chs:
        expected = block.shortcut.proj(expected)
    assert torch.allclose(block(x), expected, atol=1e-6)


def test_mbconv_rejects_other_strides():
    with pytest.raises(ValueError, match='stride'):
        MBConv(8, 8, 3)


def test_layer_norm_2d_matches_float64_formula():
    """The fused channels-last LayerNorm2d equals segment-anything's per-pixel channel normalisation."""
    from vision_rwkv.sam.modeling.common import LayerNorm2d
    norm = LayerNorm2d(6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = (torch.randn(3, 6, 5, 7) * 4 + 2).requires_grad_()
    y = norm(x)
    xd = x.detach().double().requires_grad_()
    mean = xd.mean(1, keepdim=True)
    var = (xd - mean).pow(2).mean(1, keepdim=True)
    ref = norm.weight.double()[:, None, None] * (xd - mean) / torch.sqrt(var + 1e-6) + norm.bias.double()[:, None, None]
    assert y.shape == x.shape and rel_err(y, ref) < 1e-6
    gy = torch.randn_like(y)
    (g,) = torch.autograd.grad((y * gy).sum(), x)
    (g_ref,) = torch.autograd.grad((ref * gy.double()).sum(), xd)
    assert rel_err(g, g_ref) < 1e-5
