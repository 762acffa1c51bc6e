"""VRWKV backbones: official architecture, timm contract, checkpoints, bad input."""
import math

import pytest
import timm
import timm.optim
import torch

import vision_rwkv  # noqa: F401  (registers the models)
from vision_rwkv.errors import CheckpointError
from vision_rwkv.layers import q_shift
from vision_rwkv.models import VRWKV, checkpoint_filter_fn

from conftest import rel_err

SMALL = dict(embed_dim=32, depth=3, img_size=64, num_classes=7)


def tiny_model(**kwargs):
    return VRWKV(**dict(SMALL, **kwargs)).eval()


# ---- architecture ----------------------------------------------------------------------------
@pytest.mark.parametrize('name,official_m', [
    ('vrwkv_tiny_patch16_224', 6.2),
    ('vrwkv_small_patch16_224', 23.8),
    ('vrwkv_base_patch16_224', 93.7),
    ('vrwkv_large_patch16_224', 334.9),
])
def test_parameter_counts_match_official_table(name, official_m):
    with torch.device('meta'):
        model = timm.create_model(name)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    # the official table rounds mmcv's two-decimal print (B: 93.65M -> 93.7M)
    assert abs(count - official_m) <= 0.06


def test_official_hyperparameters():
    with torch.device('meta'):
        tiny = timm.create_model('vrwkv_tiny_patch16_224')
        small = timm.create_model('vrwkv_small_patch16_224')
        large = timm.create_model('vrwkv_large_patch16_384')
    assert not tiny.layers[0].post_norm and tiny.layers[0].gamma1 is None
    assert small.layers[0].post_norm and small.layers[0].gamma1 is not None
    assert large.layers[0].att.key_norm is not None and len(large.layers) == 24
    assert large.pre_logits.fc.out_features == 3072 and large.patch_embed.grid_size == (24, 24)
    assert tiny.layers[0].ffn.key.out_features == 4 * 192


def test_official_parameter_names():
    """Our names are the official backbone names (mmcls VRWKV), layer 0 shown exhaustively."""
    model = tiny_model(init_values=1.0, key_norm=True)
    layer0 = {k for k in model.state_dict() if k.startswith('layers.0.')}
    expected = {f'layers.0.{n}' for n in [
        'ln0.weight', 'ln0.bias', 'ln1.weight', 'ln1.bias', 'ln2.weight', 'ln2.bias', 'gamma1', 'gamma2',
        'att.spatial_decay', 'att.spatial_first', 'att.spatial_mix_k', 'att.spatial_mix_v', 'att.spatial_mix_r',
        'att.key.weight', 'att.value.weight', 'att.receptance.weight', 'att.output.weight',
        'att.key_norm.weight', 'att.key_norm.bias',
        'ffn.spatial_mix_k', 'ffn.spatial_mix_r', 'ffn.key.weight', 'ffn.receptance.weight', 'ffn.value.weight',
        'ffn.key_norm.weight', 'ffn.key_norm.bias']}
    assert layer0 == expected
    top = {k for k in model.state_dict() if not k.startswith('layers.')}
    assert top == {'patch_embed.projection.weight', 'patch_embed.projection.bias', 'pos_embed',
                   'ln1.weight', 'ln1.bias', 'head.weight', 'head.bias',
                   'wkv_formula_id'}  # ours only: the Bi-WKV formula the weights were trained with


def official_backbone(**kwargs):
    """The test-only port of the official backbone (tests/official_vrwkv.py) at the size of ``tiny_model``."""
    from official_vrwkv import OfficialVRWKV
    return OfficialVRWKV(img_size=SMALL['img_size'], patch_size=16, embed_dims=SMALL['embed_dim'],
                         depth=SMALL['depth'], **kwargs)


MIXING = ('spatial_decay', 'spatial_first', 'spatial_mix', 'gamma')  # the parameters with a formula init


@pytest.mark.parametrize('kwargs', [dict(), dict(init_mode='local'), dict(init_mode='global'),
                                    dict(init_values=1e-5, post_norm=True, key_norm=True)],
                         ids=['fancy', 'local', 'global', 'layer-scale'])
def test_mixing_initialisation_equals_the_official_port(kwargs):
    """Decay, bonus, shift mixes and layer scales equal those the official code computes (its loops in
    Python floats, stored in float32): agreement to 4 float32 ulps of the largest value of each tensor."""
    ours = tiny_model(**kwargs).state_dict()
    official = official_backbone(**kwargs).state_dict()
    names = [k for k in official if any(m in k for m in MIXING)]
    assert len(names) == SMALL['depth'] * (7 + 2 * ('init_values' in kwargs))  # 5 att + 2 ffn (+ 2 gammas)
    for name in names:
        scale = float(official[name].abs().max())
        torch.testing.assert_close(ours[name], official[name], rtol=0, atol=4 * torch.finfo().eps * scale,
                                   msg=name)


# Values of the official fancy init (C = 32 channels, 3 layers), computed by hand from the upstream formulas
# (classification/mmcls_custom/models/backbones/vrwkv.py, layer l, channel i, r0 = l / 2, r1 = 1 - l / 3):
#   spatial_decay[i] = -5 + 8 (i / 31)^(0.7 + 1.3 r0)     spatial_first[i] = ln 0.3 + 0.5 ((i + 1) % 3 - 1)
#   att.spatial_mix_k[i] = (i / 32)^r1   att.spatial_mix_v[i] = (i / 32)^r1 + 0.3 r0
#   att.spatial_mix_r[i] = (i / 32)^(r1 / 2)   ffn.spatial_mix_k[i] = ffn.spatial_mix_r[i] = (i / 32)^r1
OFFICIAL_FANCY_VALUES = [
    ('layers.0.att.spatial_decay', 10, -1.3764288),   # -5 + 8 (10/31)^0.7
    ('layers.1.att.spatial_decay', 10, -3.2631924),   # -5 + 8 (10/31)^1.35
    ('layers.2.att.spatial_decay', 31, 3.0),          # -5 + 8
    ('layers.2.att.spatial_decay', 0, -5.0),
    ('layers.1.att.spatial_first', 0, -1.2039728),    # ln 0.3
    ('layers.1.att.spatial_first', 1, -0.7039728),    # ln 0.3 + 0.5
    ('layers.1.att.spatial_first', 2, -1.7039728),    # ln 0.3 - 0.5
    ('layers.2.att.spatial_mix_k', 8, 0.6299605),     # (1/4)^(1/3)
    ('layers.2.att.spatial_mix_v', 8, 0.9299605),     # (1/4)^(1/3) + 0.3
    ('layers.2.att.spatial_mix_r', 8, 0.7937005),     # (1/4)^(1/6)
    ('layers.1.att.spatial_mix_v', 16, 0.7799605),    # (1/2)^(2/3) + 0.15
    ('layers.0.att.spatial_mix_r', 16, 0.7071068),    # (1/2)^(1/2)
    ('layers.0.att.spatial_mix_k', 0, 0.0),           # 0^1
    ('layers.0.ffn.spatial_mix_k', 16, 0.5),          # (1/2)^1
    ('layers.1.ffn.spatial_mix_r', 16, 0.6299605),    # (1/2)^(2/3)
]


def test_fancy_initialisation_official_values():
    state = tiny_model().state_dict()
    for name, index, value in OFFICIAL_FANCY_VALUES:
        # the literals have 7 decimals: half a unit of the last one, plus float32 rounding of values up to 5
        assert abs(float(state[name].flatten()[index]) - value) <= 5e-8 + 5 * torch.finfo().eps, (name, index)


def test_initial_weight_distributions():
    """The official classification configs initialise every Linear with mmcv's TruncNormal(std=0.02, bias 0)
    and every LayerNorm with (1, 0); the patch projection keeps PyTorch's default (kaiming-uniform) and the
    position embedding starts at zero. mmcv's (and timm's) truncation bounds are absolute (±2, i.e. ±100
    std), so the weights are N(0, 0.02²) in distribution: Kolmogorov-Smirnov at significance 1e-6 (with
    65k samples a truncation at ±2 std, or std 0.022, gives p < 1e-28; measured)."""
    from scipy import stats
    model = VRWKV(embed_dim=256, depth=2, img_size=32, num_classes=1000, init_values=1e-5, key_norm=True)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(linears) >= {'layers.1.att.key', 'layers.1.att.output', 'layers.1.ffn.value', 'head'}
    for name, module in linears.items():
        w = module.weight.detach().flatten().double().numpy()
        assert stats.kstest(w, 'norm', args=(0.0, 0.02)).pvalue > 1e-6, name
        assert module.bias is None or torch.count_nonzero(module.bias) == 0, name
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name
    assert torch.count_nonzero(model.pos_embed) == 0
    assert torch.all(model.layers[1].gamma1 == 1e-5) and torch.all(model.layers[0].gamma2 == 1e-5)
    # PyTorch's Conv2d default: weights and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 3·16·16
    conv = model.patch_embed.projection
    bound = 1 / math.sqrt(3 * 16 * 16)
    assert stats.kstest(conv.weight.detach().flatten().double().numpy(), 'uniform',
                        args=(-bound, 2 * bound)).pvalue > 1e-6
    assert conv.bias.abs().max() <= bound


def test_q_shift_moves_each_group_from_its_neighbour():
    B, H, W, C = 2, 5, 6, 11  # gamma 0.2: groups of int(11 * 0.2 * n) = 2, 4, 6, 8 channels, 3 pass through
    x = torch.randn(B, H * W, C)
    out = q_shift(x, (H, W), gamma=0.2).view(B, H, W, C)
    g = x.view(B, H, W, C)
    for i in range(H):
        for j in range(W):
            def at(ii, jj, cs):
                if 0 <= ii < H and 0 <= jj < W:
                    return g[:, ii, jj, cs]
                return torch.zeros_like(g[:, 0, 0, cs])
            assert torch.equal(out[:, i, j, 0:2], at(i, j - 1, slice(0, 2)))
            assert torch.equal(out[:, i, j, 2:4], at(i, j + 1, slice(2, 4)))
            assert torch.equal(out[:, i, j, 4:6], at(i - 1, j, slice(4, 6)))
            assert torch.equal(out[:, i, j, 6:8], at(i + 1, j, slice(6, 8)))
            assert torch.equal(out[:, i, j, 8:], g[:, i, j, 8:])


def spatial_mix_float64(att, x, grid):
    """Spatial Mix written out in float64 from the official formulas, with the O(T^2) Bi-WKV."""
    from vision_rwkv.kernels import bi_wkv_reference
    p = {k: v.double() for k, v in att.state_dict().items()}
    x = x.double()
    xx = q_shift(x, grid)

    def mix(m):
        return x * m + xx * (1 - m)

    k = mix(p['spatial_mix_k']) @ p['key.weight'].T
    v = mix(p['spatial_mix_v']) @ p['value.weight'].T
    r = mix(p['spatial_mix_r']) @ p['receptance.weight'].T
    T = x.shape[1]
    y = bi_wkv_reference(p['spatial_decay'] / T, p['spatial_first'] / T, k, v)
    return (torch.sigmoid(r) * y) @ p['output.weight'].T


def test_spatial_mix_matches_float64_formula():
    model = tiny_model()
    att = model.layers[1].att
    for p in att.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 20, 32)
    assert rel_err(att(x, (4, 5)), spatial_mix_float64(att, x, (4, 5))) < 1e-5


# ---- timm contract ---------------------------------------------------------------------------
def test_forward_features_head_and_classifier():
    model = tiny_model()
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, 16, 32)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 32)
    logits = model(x)
    assert logits.shape == (2, 7)
    assert torch.allclose(logits, model.get_classifier()(feats.mean(1)), atol=1e-6)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0, '')
    assert model(x).shape == (2, 16, 32)
    with pytest.raises(ValueError, match='global_pool'):
        model.reset_classifier(3, 'token')


@pytest.mark.parametrize('pool', ['avg', 'max', 'avgmax'])
def test_global_pool(pool):
    model = tiny_model(global_pool=pool, num_classes=0)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 32)


def test_large_style_pre_logits_head():
    model = tiny_model(head_hidden_size=48)
    x = torch.randn(2, 3, 64, 64)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 48)
    assert model(x).shape == (2, 7)


def test_timm_create_model_features_only():
    model = timm.create_model('vrwkv_tiny_patch16_224', features_only=True, out_indices=(3, 7, 11))
    feats = model(torch.randn(1, 3, 224, 224))
    assert [f.shape for f in feats] == [(1, 192, 14, 14)] * 3
    assert model.feature_info.channels() == [192] * 3
    assert model.feature_info.reduction() == [16] * 3


def test_timm_create_model_options():
    model = timm.create_model('vrwkv_tiny_patch16_224', num_classes=10, in_chans=1, img_size=96,
                              drop_path_rate=0.1, global_pool='max')
    assert model(torch.randn(2, 1, 96, 96)).shape == (2, 10)
    assert model.pretrained_cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN
    cfg = timm.data.resolve_data_config({}, model=timm.create_model('vrwkv_large_patch16_384', pretrained=False))
    assert cfg['input_size'] == (3, 384, 384) and cfg['interpolation'] == 'bicubic'
    assert set(timm.list_models('vrwkv_*')) >= {
        'vrwkv_tiny_patch16_224', 'vrwkv_small_patch16_224', 'vrwkv_base_patch16_224',
        'vrwkv_large_patch16_224', 'vrwkv_large_patch16_192', 'vrwkv_large_patch16_384'}
    assert 'vrwkv_tiny_patch16_224.in1k' in timm.list_pretrained('vrwkv_*')


def test_forward_intermediates():
    model = tiny_model()
    x = torch.randn(2, 3, 64, 64)
    final, inter = model.forward_intermediates(x)
    assert torch.allclose(final, model.forward_features(x), atol=1e-6)
    assert len(inter) == 3 and inter[0].shape == (2, 32, 4, 4)
    nlc = model.forward_intermediates(x, indices=[0, 2], output_fmt='NLC', intermediates_only=True, norm=True)
    assert [t.shape for t in nlc] == [(2, 16, 32)] * 2
    assert torch.allclose(nlc[1], final, atol=1e-6)
    early = model.forward_intermediates(x, indices=1, stop_early=True, intermediates_only=True)
    assert torch.allclose(early[0], inter[2])
    kept = model.prune_intermediate_layers([1])
    assert kept == [1] and len(model.layers) == 2
    assert model(x).shape == (2, 16, 32)  # pruned head: no pooling, no classifier


def test_dynamic_img_size_and_padding():
    strict = tiny_model()
    with pytest.raises(ValueError, match='does not match the model'):
        strict(torch.randn(1, 3, 80, 64))
    dynamic = tiny_model(dynamic_img_size=True)
    dynamic.load_state_dict(strict.state_dict())
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(dynamic(x), strict(x), atol=1e-6)
    assert dynamic(torch.randn(1, 3, 80, 48)).shape == (1, 7)
    with pytest.raises(ValueError, match='not divisible by the patch size'):
        dynamic(torch.randn(1, 3, 70, 48))
    padded = tiny_model(dynamic_img_size=True, dynamic_img_pad=True)
    assert padded.forward_intermediates(torch.randn(1, 3, 70, 48), intermediates_only=True)[0].shape == (1, 32, 5, 3)


def test_bad_images_raise_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r'expected images of shape \(B, 3, H, W\)'):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match=r'expected images'):
        model(torch.randn(3, 64, 64))


def test_grad_checkpointing_gives_same_gradients():
    model = tiny_model(drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for g, r in zip((p.grad for p in model.parameters()), ref):
        assert torch.allclose(g, r, atol=1e-5, rtol=1e-4)


def test_optimizer_groups_with_layer_decay():
    model = tiny_model()
    assert model.no_weight_decay() == {'pos_embed'}
    opt = timm.optim.create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    scales = {g['lr_scale'] for g in opt.param_groups}
    assert len(scales) == 5  # stem, 3 blocks, head


def test_training_steps_reduce_loss():
    model = tiny_model(num_classes=2).train()
    x = torch.randn(8, 3, 64, 64)
    y = torch.tensor([0, 1] * 4)
    x[y == 1] += 0.5
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bf16_autocast_forward():
    model = tiny_model()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 64, 64))
    assert torch.isfinite(out).all()


# ---- checkpoints -----------------------------------------------------------------------------
def official_classification_checkpoint(model):
    """An mmcls-format checkpoint as the official release writes it."""
    state = {}
    for k, v in model.state_dict().items():
        state['head.fc.' + k[5:] if k.startswith('head.') else 'backbone.' + k] = v.clone()
    return {'meta': {'epoch': 300}, 'state_dict': state}


def test_filter_loads_official_classification_checkpoint(tmp_path):
    src = tiny_model()
    for p in src.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ckpt = official_classification_checkpoint(src)
    assert 'backbone.layers.0.att.spatial_decay' in ckpt['state_dict'] and 'head.fc.weight' in ckpt['state_dict']
    dst = tiny_model()
    dst.load_state_dict(checkpoint_filter_fn(ckpt, dst))
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(dst(x), src(x))


def test_filter_loads_internimage_large_format():
    src = tiny_model(head_hidden_size=48, key_norm=True, post_norm=True, init_values=1e-5)
    state = {}
    for k, v in src.state_dict().items():
        k = k.replace('pre_logits.fc.', 'head.0.') if k.startswith('pre_logits.') else k
        k = 'head.2.' + k[5:] if k.startswith('head.') and not k.startswith('head.0.') else k
        state[k if k.startswith('head.') else 'backbone.' + k] = v
    dst = tiny_model(head_hidden_size=48, key_norm=True, post_norm=True, init_values=1e-5)
    dst.load_state_dict(checkpoint_filter_fn({'model': state}, dst))
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(dst(x), src(x))


def test_filter_loads_mmseg_adapter_backbone():
    src = tiny_model(init_values=1.0)
    state = {'backbone.' + k: v for k, v in src.state_dict().items() if not k.startswith(('ln1.', 'head.'))}
    state.update({
        'backbone.level_embed': torch.zeros(3, 32), 'backbone.spm.stem.0.weight': torch.zeros(64, 3, 3, 3),
        'backbone.interactions.0.injector.gamma': torch.zeros(32), 'backbone.up.weight': torch.zeros(32, 32, 2, 2),
        'backbone.norm1.weight': torch.zeros(32), 'decode_head.conv_seg.weight': torch.zeros(150, 512, 1, 1),
        'auxiliary_head.conv_seg.weight': torch.zeros(150, 256, 1, 1)})
    dst = tiny_model(init_values=1.0)
    dst.load_state_dict(checkpoint_filter_fn({'state_dict': state, 'meta': {}}, dst))
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(dst.forward_intermediates(x, intermediates_only=True)[-1],
                       src.forward_intermediates(x, intermediates_only=True)[-1])


def test_filter_resamples_pos_embed_and_leaves_in_chans_to_timm():
    src = tiny_model()
    dst = tiny_model(img_size=96, in_chans=1)
    state = checkpoint_filter_fn(official_classification_checkpoint(src), dst)
    assert state['pos_embed'].shape == (1, 36, 32)
    # timm's loader adapts the input channels, once (test_pretrained_file_adapts_in_chans_once)
    assert torch.equal(state['patch_embed.projection.weight'], src.patch_embed.projection.weight)


def test_timm_pretrained_from_official_file(tmp_path):
    """timm's own pretrained path (weights_only=True) with an official-format file."""
    src = timm.create_model('vrwkv_tiny_patch16_224').eval()
    for p in src.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path / 'vrwkv_t_in1k_224.pth'
    torch.save(official_classification_checkpoint(src), path)
    model = timm.create_model('vrwkv_tiny_patch16_224', pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(model(x), src(x))
    finetune = timm.create_model('vrwkv_tiny_patch16_224', pretrained=True, num_classes=5,
                                 pretrained_cfg_overlay=dict(file=str(path)))
    assert finetune(x).shape == (1, 5)


class NotATensor:
    """A custom Python object: pickled into a checkpoint it needs code to load (refused by weights_only=True)."""

    def __init__(self):
        self.loaded_by_unpickling = True


TIMM_TINY = dict(embed_dim=32, depth=3, img_size=64)  # vrwkv_tiny_patch16_224 shrunk through timm's kwargs


def timm_from_file(path, **kwargs):
    return timm.create_model('vrwkv_tiny_patch16_224', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                             **dict(TIMM_TINY, **kwargs))


def save_official(tmp_path, name='vrwkv.pth', **kwargs):
    """An official-format checkpoint of a random timm model (normal weights, so no value is an init value)."""
    src = timm.create_model('vrwkv_tiny_patch16_224', **dict(TIMM_TINY, **kwargs))
    for p in src.parameters():
        torch.nn.init.normal_(p, std=0.1)
    path = tmp_path / name
    torch.save(official_classification_checkpoint(src), path)
    return src, path


@pytest.mark.parametrize('in_chans', [1, 4])
def test_pretrained_file_adapts_in_chans_once(tmp_path, in_chans):
    """The filter leaves the 3-channel projection to timm's loader, which adapts it once: adapting twice
    (3 -> 4 -> 4) raises inside timm and leaves a random projection."""
    src, path = save_official(tmp_path)
    model = timm_from_file(path, in_chans=in_chans)
    expected = timm.models.adapt_input_conv(in_chans, src.patch_embed.projection.weight.detach())
    assert model.patch_embed.projection.weight.shape == (32, in_chans, 16, 16)
    assert torch.equal(model.patch_embed.projection.weight, expected)
    assert torch.equal(model.layers[2].att.key.weight, src.layers[2].att.key.weight)


def test_pretrained_file_with_python_objects_is_refused(tmp_path):
    src, _ = save_official(tmp_path)
    path = tmp_path / 'unsafe.pth'
    torch.save(dict(official_classification_checkpoint(src), meta=NotATensor()), path)
    with pytest.raises(RuntimeError, match=r'unsafe\.pth holds Python objects that weights_only=True refuses.*'
                                           r'NotATensor'):
        timm_from_file(path)


def test_hub_download_loads_through_the_same_reader(tmp_path, monkeypatch):
    """``pretrained=True`` without a file: the downloaded file goes through VRWKV.load_pretrained too."""
    src, path = save_official(tmp_path)
    unsafe = tmp_path / 'unsafe.pth'
    torch.save(dict(official_classification_checkpoint(src), meta=NotATensor()), unsafe)
    downloads = []

    def fake_download(repo_id, filename, **kwargs):
        downloads.append((repo_id, filename))
        return str(unsafe if len(downloads) == 1 else path)

    monkeypatch.setattr(timm.models._hub, 'hf_hub_download', fake_download)
    kwargs = dict(TIMM_TINY, num_classes=1000)
    with pytest.raises(RuntimeError, match=r'unsafe\.pth holds Python objects'):
        timm.create_model('vrwkv_tiny_patch16_224', pretrained=True, **kwargs)
    model = timm.create_model('vrwkv_tiny_patch16_224', pretrained=True, **kwargs).eval()
    assert downloads == [('OpenGVLab/Vision-RWKV', 'vrwkv_t_in1k_224.pth')] * 2
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model(x), src.eval()(x))


def assert_raised_here(excinfo, filename):
    """The error is ours (raised in ``filename``), with no torch traceback chained to it."""
    error = excinfo.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    assert excinfo.traceback[-1].path.name == filename


def test_truncated_pretrained_file_names_the_file(tmp_path):
    _, path = save_official(tmp_path)
    data = path.read_bytes()
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(RuntimeError, match=r'checkpoint .*truncated\.pth is truncated or corrupt') as excinfo:
        timm_from_file(truncated)
    assert_raised_here(excinfo, 'checkpoint.py')
    with pytest.raises(FileNotFoundError, match='missing.pth does not exist'):
        timm_from_file(tmp_path / 'missing.pth')


def foreign_state_dict():
    """A ViT's keys: neither our format nor the official one."""
    return timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=16, depth=1).state_dict()


def test_checkpoint_of_another_architecture_names_unexpected_and_missing_keys(tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match=r"unexpected keys, e\.g\. \[.*'cls_token'.*missing keys, e\.g\. "
                                         r"\[.*'patch_embed\.projection\.weight'") as excinfo:
        checkpoint_filter_fn(foreign_state_dict(), model)
    assert_raised_here(excinfo, 'vrwkv.py')
    path = tmp_path / 'vit.pth'
    torch.save(foreign_state_dict(), path)
    for num_classes in (1000, 5):  # another num_classes: timm itself would load non-strictly
        with pytest.raises(ValueError, match=r'checkpoint .*vit\.pth: checkpoint keys match neither.*'
                                             r'missing keys') as excinfo:
            timm_from_file(path, num_classes=num_classes)
        assert_raised_here(excinfo, 'vrwkv.py')
    with pytest.raises(CheckpointError, match='the checkpoint holds a list, not a state dict'):
        checkpoint_filter_fn([torch.zeros(3)], model)


def test_truncated_state_dict_names_the_missing_keys(tmp_path):
    """A checkpoint cut short (its last blocks absent) is refused, also where timm would load non-strictly."""
    src, _ = save_official(tmp_path)
    state = {k: v for k, v in official_classification_checkpoint(src)['state_dict'].items()
             if not k.startswith('backbone.layers.2.')}
    with pytest.raises(ValueError, match=r"0 unexpected keys.*missing keys, e\.g\. \['layers\.2\."):
        checkpoint_filter_fn({'state_dict': state}, tiny_model())
    path = tmp_path / 'short.pth'
    torch.save({'state_dict': state}, path)
    with pytest.raises(ValueError, match=r"short\.pth: .*missing keys, e\.g\. \['layers\.2\."):
        timm_from_file(path, num_classes=5)


def test_headless_model_loads_checkpoint_with_pre_logits_head(tmp_path):
    """VRWKV-L's fc + tanh belongs to its classifier: num_classes=0 builds neither and loads the rest."""
    src, path = save_official(tmp_path, head_hidden_size=48)
    model = timm_from_file(path, head_hidden_size=48, num_classes=0).eval()
    assert isinstance(model.pre_logits, torch.nn.Identity) and model.head_hidden_size == 32
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model(x), src.eval().forward_features(x).mean(1))


@pytest.mark.parametrize('init_mode,decay,mix', [('local', 1.0, 1.0), ('global', 0.0, 0.5)])
def test_other_init_modes_and_no_shift(init_mode, decay, mix):
    model = tiny_model(init_mode=init_mode)
    assert torch.all(model.layers[1].att.spatial_decay == decay)
    assert torch.all(model.layers[1].ffn.spatial_mix_r == mix)
    no_shift = tiny_model(shift_pixel=0)
    assert not [k for k in no_shift.state_dict() if 'spatial_mix' in k]
    assert no_shift(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    with pytest.raises(ValueError, match='init_mode'):
        tiny_model(init_mode='xavier')


@pytest.mark.parametrize('mode', ['raster', 'cross', '2d'])
def test_wkv_modes_match_their_references(mode):
    from vision_rwkv.kernels import bi_wkv_2d_reference
    from vision_rwkv.kernels.reference import bi_wkv_scan_reference
    from vision_rwkv.layers.spatial_mix import SpatialMix

    H, W, C = 3, 5, 8
    mix = SpatialMix(C, layer_id=1, num_layers=4, wkv_mode=mode).double()
    k, v = torch.randn(2, H * W, C, dtype=torch.float64), torch.randn(2, H * W, C, dtype=torch.float64)
    y = mix.wkv(k, v, (H, W))
    if mode == '2d':
        n = H + W
        y_ref = bi_wkv_2d_reference(mix.spatial_decay / n, mix.spatial_first / n, k, v, (H, W))
    else:
        n = H * W
        y_ref = bi_wkv_scan_reference(mix.spatial_decay / n, mix.spatial_first / n, k, v, (H, W),
                                      'row' if mode == 'raster' else 'cross')
    assert rel_err(y, y_ref) < 1e-10


def test_wkv_mode_models_in_timm_load_raster_weights():
    raster = timm.create_model('vrwkv_tiny_patch16_224', num_classes=4, img_size=64)
    x = torch.randn(2, 3, 64, 64)
    outputs = {}
    for name in ('vrwkvcross_tiny_patch16_224', 'vrwkv2d_tiny_patch16_224'):
        model = timm.create_model(name, num_classes=4, img_size=64)
        model.load_state_dict(raster.state_dict())  # same parameters, strict
        model.eval()
        out = model(x)
        out.sum().backward()
        outputs[name] = out.detach()
    raster.eval()
    ref = raster(x).detach()
    assert all(rel_err(out, ref) > 1e-4 for out in outputs.values()), 'modes must differ from raster'
    with pytest.raises(ValueError, match='wkv_mode must be one of'):
        timm.create_model('vrwkv_tiny_patch16_224', wkv_mode='diagonal')
