"""Multi-scale deformable attention and the VRWKV-Adapter backbone (plain PyTorch, no mmseg)."""
import math

import pytest
import timm
import torch

from vision_rwkv.layers import resample_pos_embed
from vision_rwkv.layers.adapter import deform_inputs, pyramid_shapes
from vision_rwkv.layers.ms_deform_attn import MSDeformAttn, ms_deform_attn
from vision_rwkv.models import VRWKVAdapter, backbone_checkpoint_filter, load_backbone_checkpoint


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def ms_deform_attn_reference(value, shapes, locations, weights):
    """Bilinear sampling written out point by point, float64 (zeros outside, pixel centres at +0.5)."""
    B, _, M, D = value.shape
    _, Q, _, L, P, _ = locations.shape
    starts = [0]
    for h, w in shapes.tolist():
        starts.append(starts[-1] + h * w)
    out = torch.zeros(B, Q, M, D, dtype=torch.float64)
    for b in range(B):
        for q in range(Q):
            for m in range(M):
                for level, (h, w) in enumerate(shapes.tolist()):
                    for p in range(P):
                        x = locations[b, q, m, level, p, 0].item() * w - 0.5
                        y = locations[b, q, m, level, p, 1].item() * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(D, dtype=torch.float64)
                        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                            if 0 <= yy < h and 0 <= xx < w:
                                corner = (1 - abs(x - xx)) * (1 - abs(y - yy))
                                sample += corner * value[b, starts[level] + yy * w + xx, m].double()
                        out[b, q, m] += weights[b, q, m, level, p].double() * sample
    return out.reshape(B, Q, M * D)


def random_inputs(B=2, Q=5, M=2, D=3, shapes=((4, 6), (2, 3)), P=3, dtype=torch.float32):
    shapes = torch.tensor(shapes)
    S = int(shapes.prod(1).sum())
    L = len(shapes)
    value = torch.randn(B, S, M, D, dtype=dtype)
    # some points fall outside [0, 1] (zero padding) and on exact pixel centres
    locations = torch.rand(B, Q, M, L, P, 2, dtype=dtype) * 1.4 - 0.2
    weights = torch.rand(B, Q, M, L, P, dtype=dtype).softmax(-1)
    return value, shapes, locations, weights


def test_ms_deform_attn_matches_pointwise_reference():
    value, shapes, locations, weights = random_inputs()
    out = ms_deform_attn(value, shapes, locations, weights)
    ref = ms_deform_attn_reference(value, shapes, locations, weights)
    assert out.shape == ref.shape == (2, 5, 6)
    assert rel_err(out, ref) < 1e-5


def test_ms_deform_attn_gradients_float64():
    value, shapes, locations, weights = random_inputs(B=1, Q=3, shapes=((3, 4), (2, 2)), P=2, dtype=torch.float64)
    # keep the points away from pixel-grid lines, where bilinear sampling is not differentiable
    locations = locations.clamp(0.05, 0.95)
    for t in (value, locations, weights):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v, loc, w: ms_deform_attn(v, shapes, loc, w),
                                    (value, locations, weights), eps=1e-6, atol=1e-6)


def test_msdeformattn_initial_offsets_and_shape_checks():
    attn = MSDeformAttn(d_model=12, n_levels=2, n_heads=4, n_points=3)
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # head h points along its own direction, the p-th point p+1 steps out, identical for every level
    assert torch.allclose(bias[:, 0], bias[:, 1])
    assert torch.allclose(bias[:, 0, 2], 3 * bias[:, 0, 0])
    assert torch.allclose(bias[0, 0, 0], torch.tensor([1.0, 0.0]))
    query, feats = torch.randn(2, 5, 12), torch.randn(2, 20, 12)
    shapes = torch.tensor([[4, 4], [2, 2]])
    out = attn(query, torch.rand(1, 5, 1, 2), feats, shapes)
    assert out.shape == (2, 5, 12)
    with pytest.raises(ValueError, match='spatial_shapes'):
        attn(query, torch.rand(1, 5, 1, 2), feats, torch.tensor([[4, 4], [2, 3]]))
    with pytest.raises(ValueError, match='divisible by n_heads'):
        MSDeformAttn(d_model=10, n_heads=4)


def test_padding_mask_zeroes_masked_values():
    attn = MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=2)
    query, feats = torch.randn(1, 3, 8), torch.randn(1, 16, 8)
    shapes = torch.tensor([[4, 4]])
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[:, 8:] = True
    changed = feats.clone()
    changed[:, 8:] = 100.0
    points = torch.rand(1, 3, 1, 2)
    assert torch.allclose(attn(query, points, feats, shapes, mask), attn(query, points, changed, shapes, mask))


def test_deform_inputs_geometry():
    (inj_points, inj_shapes), (ext_points, ext_shapes) = deform_inputs(64, 96, torch.device('cpu'))
    assert pyramid_shapes(64, 96) == [(8, 12), (4, 6), (2, 3)]
    assert inj_shapes.tolist() == [[8, 12], [4, 6], [2, 3]] and ext_shapes.tolist() == [[4, 6]]
    assert inj_points.shape == (1, 24, 1, 2) and ext_points.shape == (1, 96 + 24 + 6, 1, 2)
    # first query of the stride-16 grid: the centre of pixel (0, 0) of a 4×6 map, as (x, y)
    assert torch.allclose(inj_points[0, 0, 0], torch.tensor([0.5 / 6, 0.5 / 4]))


def small_adapter(**kwargs):
    args = dict(img_size=64, embed_dim=48, depth=4, deform_num_heads=6, conv_inplane=16,
                interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]])
    return VRWKVAdapter(**dict(args, **kwargs))


def test_adapter_pyramid_shapes_and_gradients():
    model = small_adapter(init_values_inject=0.1)
    x = torch.randn(2, 3, 64, 96)
    feats = model(x)
    assert [tuple(f.shape) for f in feats] == [(2, 48, 16, 24), (2, 48, 8, 12), (2, 48, 4, 6), (2, 48, 2, 3)]
    sum((f * torch.randn_like(f)).sum() for f in feats).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    with pytest.raises(ValueError, match='multiples of 32'):
        model(torch.randn(1, 3, 48, 64))


def test_adapter_float32_matches_float64():
    torch.manual_seed(0)
    model = small_adapter(init_values_inject=0.5).eval()
    x = torch.randn(1, 3, 64, 64)
    out32 = model(x)
    out64 = model.double()(x.double())
    for a, b in zip(out32, out64):
        assert rel_err(a, b) < 1e-4


def test_adapter_rejects_bad_groups_and_patch_size():
    with pytest.raises(ValueError, match='interaction_indexes'):
        small_adapter(interaction_indexes=[[0, 1], [3, 3]])
    with pytest.raises(ValueError, match='patch_size must be 16'):
        small_adapter(patch_size=8)
    with pytest.raises(ValueError, match='4 interaction groups'):
        small_adapter(interaction_indexes=[[0, 1], [2, 3]])
    assert len(small_adapter(interaction_indexes=[[0, 1], [2, 3]], add_rwkv_feature=False)(
        torch.randn(1, 3, 64, 64))) == 4


@pytest.mark.parametrize('size, kwargs, official_millions', [
    ('T', dict(embed_dim=192, init_values=1.0, deform_num_heads=6), 8.4),
    ('S', dict(embed_dim=384, init_values=1e-5, post_norm=True, deform_num_heads=6), 29.3),
    ('B', dict(embed_dim=768, init_values=1e-5, post_norm=True, deform_num_heads=12, deform_ratio=0.5), 106.6),
])
def test_adapter_parameter_counts_match_official_table(size, kwargs, official_millions):
    """The official README lists 8.4M / 29.3M / 106.6M backbone parameters (img_size 224)."""
    model = VRWKVAdapter(img_size=224, depth=12, **kwargs)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == official_millions


def test_adapter_has_official_parameter_names():
    keys = set(small_adapter().state_dict())
    official = {
        'pos_embed', 'patch_embed.projection.weight', 'layers.0.ln0.weight', 'layers.3.att.spatial_decay',
        'level_embed', 'up.weight', 'norm1.weight', 'norm4.running_var',
        'spm.stem.0.weight', 'spm.stem.1.running_mean', 'spm.stem.7.bias', 'spm.conv4.1.weight', 'spm.fc4.bias',
        'interactions.0.injector.gamma', 'interactions.0.injector.query_norm.weight',
        'interactions.0.injector.attn.sampling_offsets.weight', 'interactions.0.injector.attn.value_proj.bias',
        'interactions.0.extractor.attn.attention_weights.weight', 'interactions.0.extractor.ffn.fc1.weight',
        'interactions.0.extractor.ffn.dwconv.dwconv.weight', 'interactions.0.extractor.ffn_norm.bias',
        'interactions.3.extra_extractors.1.attn.output_proj.weight',
    }
    assert official <= keys
    assert not any(k.startswith(('ln1.', 'head.', 'interactions.0.extra_extractors')) for k in keys)


def test_classification_checkpoint_initialises_backbone(tmp_path):
    """A timm VRWKV state dict at 224 loads into an adapter at crop 512; the position embedding is resampled."""
    source = timm.create_model('vrwkv_tiny_patch16_224', num_classes=10)
    path = tmp_path / 'cls.pth'
    torch.save({'state_dict': {f'model.{k}': v for k, v in source.state_dict().items()}}, path)
    model = VRWKVAdapter(img_size=512, embed_dim=192, depth=12)
    report = load_backbone_checkpoint(model, str(path))
    state = model.state_dict()
    assert torch.equal(state['layers.5.att.key.weight'], source.state_dict()['layers.5.att.key.weight'])
    expected_pos = resample_pos_embed(source.pos_embed.detach(), (14, 14), (32, 32), 'bicubic')
    assert torch.allclose(state['pos_embed'], expected_pos)
    assert report['unexpected'] == []
    assert all(k.startswith(('spm.', 'interactions.', 'level_embed', 'up.', 'norm')) for k in report['missing'])


def test_segmentation_checkpoint_gives_identical_outputs(tmp_path):
    """An official-layout mmseg checkpoint (backbone at 224 + heads) reproduces its outputs at crop 64."""
    torch.manual_seed(0)
    source = small_adapter(img_size=32, init_values_inject=0.3).eval()
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    state['decode_head.conv_seg.weight'] = torch.randn(8, 48, 1, 1)
    path = tmp_path / 'seg.pth'
    torch.save({'meta': {'iter': 160000}, 'state_dict': state}, path)
    model = small_adapter(img_size=64).eval()
    report = load_backbone_checkpoint(model, str(path))
    assert report == dict(missing=[], unexpected=[])
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(model(x), source(x)):
        assert rel_err(a, b) < 1e-5


def test_bad_checkpoints_are_named(tmp_path):
    other = tmp_path / 'other.pth'
    torch.save({'state_dict': {'conv1.weight': torch.zeros(3)}}, other)
    with pytest.raises(ValueError, match='no Vision-RWKV backbone weights'):
        load_backbone_checkpoint(small_adapter(), str(other))
    wider = tmp_path / 'wider.pth'
    torch.save(small_adapter(embed_dim=96).state_dict(), wider)
    with pytest.raises(ValueError, match='another model size'):
        load_backbone_checkpoint(small_adapter(), str(wider))
    assert backbone_checkpoint_filter({'model': {'head.weight': torch.zeros(1)}}, small_adapter()) == {}


def test_unsafe_and_truncated_files_are_named(tmp_path):
    state = small_adapter().state_dict()
    unsafe = tmp_path / 'unsafe.pth'
    torch.save({'state_dict': state, 'meta': {'hook': NotATensor()}}, unsafe)
    with pytest.raises(RuntimeError, match=r'unsafe\.pth holds Python objects.*NotATensor'):
        load_backbone_checkpoint(small_adapter(), str(unsafe))
    truncated = tmp_path / 'truncated.pth'
    torch.save(state, truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(RuntimeError, match=r'truncated\.pth is truncated or corrupt'):
        load_backbone_checkpoint(small_adapter(), str(truncated))


class NotATensor:
    """A custom Python object: pickled into a checkpoint it needs code to load (refused by weights_only=True)."""
