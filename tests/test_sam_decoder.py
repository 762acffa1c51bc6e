"""RWKV-SAM prompt encoder, two-way transformer and multiscale mask decoder (segment-anything semantics).

Small sizes: a 16×16 image embedding of a 256×256 input (stride 16), so mask prompts and output
masks are 64×64 and the stride-4 / stride-8 maps 64×64 / 32×32.

Oracle: segment-anything's own modules (``segment_anything.modeling``), loaded with our weights
(state dicts copied by name), on the same inputs.
"""
from collections import namedtuple

import pytest
import torch
import torch.nn as nn
from segment_anything.modeling import MaskDecoder as SamMaskDecoder
from segment_anything.modeling import PromptEncoder as SamPromptEncoder
from segment_anything.modeling import TwoWayTransformer as SamTwoWayTransformer
from segment_anything.modeling.transformer import Attention as SamAttention

from vision_rwkv.sam.modeling.common import LayerNorm2d
from vision_rwkv.sam.modeling.image_encoder import ImageFeatures
from vision_rwkv.sam.modeling.mask_decoder import MultiScaleMaskDecoder, gather_rows
from vision_rwkv.sam.modeling.prompt_encoder import PromptEncoder
from vision_rwkv.sam.modeling.transformer import Attention, TwoWayTransformer

Features = namedtuple('Features', ['embedding', 'stride4', 'stride8'])

GRID = 16
INPUT = 256
DIM = 256


def rel_err(actual, expected):
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-300))


def prompt_encoder():
    return PromptEncoder(embed_dim=DIM, image_embedding_size=(GRID, GRID), input_image_size=(INPUT, INPUT),
                         mask_in_chans=16)


def features(n=1, s4=64, s8=128):
    return Features(torch.randn(n, DIM, GRID, GRID), torch.randn(n, s4, 4 * GRID, 4 * GRID),
                    torch.randn(n, s8, 2 * GRID, 2 * GRID))


EPS32 = torch.finfo(torch.float32).eps
EPS64 = torch.finfo(torch.float64).eps


def randomise(module, spread=0.2):
    """Perturb every norm (weight 1 + N(0, spread²), bias N(0, spread²)) and every other bias
    (N(0, spread²)), so that swapped norms or a dropped bias change the output; weights of linears and
    convolutions keep their default initialisation (unit-scale activations)."""
    with torch.no_grad():
        for m in module.modules():
            is_norm = isinstance(m, (nn.LayerNorm, LayerNorm2d))
            if is_norm:
                m.weight.copy_(1 + spread * torch.randn_like(m.weight))
            if is_norm or isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)) and m.bias is not None:
                m.bias.copy_(spread * torch.randn_like(m.bias))
    return module


def sam_twin(ours, sam_module):
    """segment-anything's module with our weights, copied by name (strict: every SAM key must exist)."""
    state = ours.state_dict()
    sam_module.load_state_dict({k: state[k] for k in sam_module.state_dict()}, strict=True)
    return sam_module.to(next(ours.parameters()).dtype)


def sam_prompt_encoder_keys():
    keys = {'pe_layer.positional_encoding_gaussian_matrix', 'not_a_point_embed.weight', 'no_mask_embed.weight'}
    keys |= {f'point_embeddings.{i}.weight' for i in range(4)}
    keys |= {f'mask_downscaling.{i}.{p}' for i in (0, 1, 3, 4, 6) for p in ('weight', 'bias')}
    return keys


def sam_transformer_keys(depth, prefix=''):
    attn = [f'{proj}.{p}' for proj in ('q_proj', 'k_proj', 'v_proj', 'out_proj') for p in ('weight', 'bias')]
    keys = set()
    for i in range(depth):
        layer = f'{prefix}layers.{i}.'
        for name in ('self_attn', 'cross_attn_token_to_image', 'cross_attn_image_to_token'):
            keys |= {f'{layer}{name}.{a}' for a in attn}
        for name in ('norm1', 'norm2', 'norm3', 'norm4', 'mlp.lin1', 'mlp.lin2'):
            keys |= {f'{layer}{name}.{p}' for p in ('weight', 'bias')}
    keys |= {f'{prefix}final_attn_token_to_image.{a}' for a in attn}
    keys |= {f'{prefix}norm_final_attn.{p}' for p in ('weight', 'bias')}
    return keys


def sam_mask_decoder_keys(depth=2, tokens=4):
    keys = sam_transformer_keys(depth, 'transformer.')
    keys |= {'iou_token.weight', 'mask_tokens.weight'}
    keys |= {f'output_upscaling.{i}.{p}' for i in (0, 1, 3) for p in ('weight', 'bias')}
    keys |= {f'output_hypernetworks_mlps.{t}.layers.{j}.{p}' for t in range(tokens) for j in range(3)
             for p in ('weight', 'bias')}
    keys |= {f'iou_prediction_head.layers.{j}.{p}' for j in range(3) for p in ('weight', 'bias')}
    return keys


# ---------------------------------------------------------------- prompt encoder


@pytest.mark.parametrize('prompts, tokens', [('points', 3 + 1), ('box', 2), ('points+box', 3 + 2)])
def test_prompt_encoder_sparse_token_counts(prompts, tokens):
    enc = prompt_encoder()
    b = 2
    points = (torch.rand(b, 3, 2) * INPUT, torch.randint(0, 2, (b, 3))) if 'points' in prompts else None
    boxes = torch.tensor([[10., 20., 100., 120.], [0., 0., 255., 255.]]) if 'box' in prompts else None
    sparse, dense = enc(points=points, boxes=boxes, masks=None)
    assert sparse.shape == (b, tokens, DIM)
    assert dense.shape == (b, DIM, GRID, GRID)
    assert torch.equal(dense, enc.no_mask_embed.weight.reshape(1, DIM, 1, 1).expand(b, -1, GRID, GRID))


def test_prompt_encoder_no_prompt_and_mask_prompt():
    enc = prompt_encoder()
    assert enc.mask_input_size == (4 * GRID, 4 * GRID)
    sparse, dense = enc(points=None, boxes=None, masks=None)
    assert sparse.shape == (1, 0, DIM)
    assert torch.equal(dense, enc.no_mask_embed.weight.reshape(1, DIM, 1, 1).expand(1, -1, GRID, GRID))

    masks = torch.randn(3, 1, 4 * GRID, 4 * GRID)
    sparse, dense = enc(points=None, boxes=None, masks=masks)
    assert sparse.shape == (3, 0, DIM)
    assert dense.shape == (3, DIM, GRID, GRID)
    torch.testing.assert_close(dense, enc.mask_downscaling(masks))
    other = enc(points=None, boxes=None, masks=masks.flip(-1))[1]
    assert not torch.allclose(dense, other)


def sam_prompt_encoder(enc):
    return sam_twin(enc, SamPromptEncoder(embed_dim=DIM, image_embedding_size=(GRID, GRID),
                                          input_image_size=(INPUT, INPUT), mask_in_chans=16))


def fourier_atol(enc, extra=0.0):
    """Absolute float32 error bound of a Fourier token. Its argument 2π(2p - 1)·G, p in [0, 1]², has
    magnitude at most A = 2π·max_j(|G_0j| + |G_1j|); float32 rounds it (and sin / cos) by a few ulps of A,
    so two float32 implementations that order the same operations differently agree within 4·A·eps32;
    ``extra`` adds the magnitude of embeddings summed onto the token (one rounding each)."""
    g = enc.pe_layer.positional_encoding_gaussian_matrix
    scale = 2 * torch.pi * float(g.abs().sum(0).max())
    return 4 * EPS32 * (scale + extra)


PROMPT_CASES = {
    # fg, bg and a given padding point (label -1), then the padding point appended without a box
    'points': lambda: ((torch.tensor([[[30., 40.], [200., 10.], [77., 77.]],
                                      [[0., 0.], [255., 255.], [128., 3.]]]), torch.tensor([[1, 0, -1], [0, 1, 1]])),
                       None, None),
    'box': lambda: (None, torch.tensor([[10., 20., 100., 120.], [0., 0., 255., 255.]]), None),
    'points+box': lambda: ((torch.rand(2, 2, 2) * INPUT, torch.tensor([[1, 0], [1, 1]])),
                           torch.tensor([[10., 20., 100., 120.], [3., 4., 5., 6.]]), None),
    'mask': lambda: (None, None, torch.randn(2, 1, 4 * GRID, 4 * GRID)),
    'all': lambda: ((torch.rand(2, 1, 2) * INPUT, torch.tensor([[0], [1]])), torch.rand(2, 4) * INPUT,
                    torch.randn(2, 1, 4 * GRID, 4 * GRID)),
    'none': lambda: (None, None, None),
}


@pytest.mark.parametrize('case', PROMPT_CASES)
def test_prompt_encoder_matches_segment_anything(case):
    """Sparse and dense embeddings equal segment-anything's PromptEncoder with the same weights (float32:
    its point path casts coordinates to float32)."""
    enc = randomise(prompt_encoder())
    sam = sam_prompt_encoder(enc)
    points, boxes, masks = PROMPT_CASES[case]()
    with torch.no_grad():
        sparse, dense = enc(points=points, boxes=boxes, masks=masks)
        sam_sparse, sam_dense = sam(points=points, boxes=boxes, masks=masks)
    assert sparse.shape == sam_sparse.shape and dense.shape == sam_dense.shape
    type_embeddings = max(float(e.weight.abs().max()) for e in [*enc.point_embeddings, enc.not_a_point_embed])
    torch.testing.assert_close(sparse, sam_sparse, rtol=0, atol=fourier_atol(enc, type_embeddings))
    # dense: no_mask_embed copied, or mask_downscaling (3 convolutions, 2 LayerNorm2d, 2 GELU): each layer
    # rounds by a few ulps of its output scale and the LayerNorms renormalise -> 64 eps32 of the largest value
    torch.testing.assert_close(dense, sam_dense, rtol=0, atol=64 * EPS32 * float(sam_dense.abs().max()))


def test_prompt_encoder_mask_path_matches_segment_anything_in_float64():
    """The mask path runs in float64 in both (no cast there): agreement to float64 rounding, relative to
    the output scale (7 layers, a few ulps each; the longest sum has 16 channels × 2×2 taps = 64 terms)."""
    enc = randomise(prompt_encoder()).double()
    sam = sam_prompt_encoder(enc)
    masks = torch.randn(3, 1, 4 * GRID, 4 * GRID, dtype=torch.float64)
    with torch.no_grad():
        dense, sam_dense = enc(None, None, masks)[1], sam(None, None, masks)[1]
    torch.testing.assert_close(dense, sam_dense, rtol=0, atol=7 * 64 * EPS64 * float(sam_dense.abs().max()))


def test_prompt_encoder_input_dtypes():
    """Float labels (segment-anything's predictor passes them as given) and float64 coordinates give the
    float32 tokens of int labels and float32 coordinates."""
    enc = prompt_encoder()
    coords, labels = torch.tensor([[[30., 40.], [200., 10.], [77., 77.]]]), torch.tensor([[1, 0, -1]])
    with torch.no_grad():
        same, _ = enc(points=(coords.double(), labels.float()), boxes=None, masks=None)
        reference, _ = enc(points=(coords, labels), boxes=None, masks=None)
    assert same.dtype == torch.float32
    type_embeddings = max(float(e.weight.abs().max()) for e in [*enc.point_embeddings, enc.not_a_point_embed])
    torch.testing.assert_close(same, reference, rtol=0, atol=fourier_atol(enc, type_embeddings))


def test_dense_pe_matches_segment_anything_and_point_encoding():
    enc = randomise(prompt_encoder())
    dense_pe = enc.get_dense_pe()
    assert dense_pe.shape == (1, DIM, GRID, GRID)
    torch.testing.assert_close(dense_pe, sam_prompt_encoder(enc).get_dense_pe(), rtol=0, atol=fourier_atol(enc))
    # a point at the centre of embedding cell (i, j) of the input frame gets the same encoding
    stride = INPUT // GRID
    i, j = 5, 11
    point = torch.tensor([[[(j + 0.5) * stride - 0.5, (i + 0.5) * stride - 0.5]]])
    with torch.no_grad():
        token = enc(points=(point, torch.tensor([[1]])), boxes=None, masks=None)[0][0, 0]
    fg = enc.point_embeddings[1].weight[0]
    torch.testing.assert_close(token - fg, dense_pe[0, :, i, j], rtol=0,
                               atol=fourier_atol(enc, float(fg.abs().max())))


def test_prompt_encoder_state_dict_has_sam_names_and_round_trips():
    enc = prompt_encoder()
    assert set(enc.state_dict()) == sam_prompt_encoder_keys()
    assert sum(p.numel() for p in PromptEncoder().parameters()) == 6220  # segment-anything's count
    fresh = prompt_encoder()
    fresh.load_state_dict(enc.state_dict())
    points = (torch.rand(2, 3, 2) * INPUT, torch.tensor([[1, 0, -1], [1, 1, 0]]))
    boxes = torch.rand(2, 4) * INPUT
    masks = torch.randn(2, 1, 4 * GRID, 4 * GRID)
    for a, b in zip(enc(points, boxes, masks), fresh(points, boxes, masks)):
        assert torch.equal(a, b)
    assert torch.equal(enc.get_dense_pe(), fresh.get_dense_pe())


# ---------------------------------------------------------------- two-way transformer


def float64_rel_tol(reduction):
    """Relative float64 tolerance for two implementations of the same network that differ in summation
    order (SDPA vs explicit softmax, fused vs separate bias): each of about 10 steps per layer rounds by at
    most ``reduction`` ulps (its longest sum), and the LayerNorms keep values at unit scale, so the
    deviation stays below 2 layers × 10 steps × reduction × eps64; that bound is the tolerance."""
    return 2 * 10 * reduction * EPS64


@pytest.mark.parametrize('downsample_rate', [1, 2])
def test_attention_matches_segment_anything(downsample_rate):
    attn = randomise(Attention(64, 8, downsample_rate=downsample_rate)).double()
    assert attn.internal_dim == 64 // downsample_rate
    sam = sam_twin(attn, SamAttention(64, 8, downsample_rate=downsample_rate))
    q, k, v = (torch.randn(2, n, 64, dtype=torch.float64) for n in (5, 37, 37))
    with torch.no_grad():
        out, expected = attn(q=q, k=k, v=v), sam(q=q, k=k, v=v)
    assert out.shape == (2, 5, 64)
    assert rel_err(out, expected) < float64_rel_tol(64)


def test_attention_rejects_heads_not_dividing_width():
    with pytest.raises(ValueError, match='num_heads'):
        Attention(40, 8, downsample_rate=2)


def test_two_way_transformer_matches_segment_anything():
    """Same weights, same inputs: float64 outputs equal segment-anything's to float64 rounding; our
    float32 outputs are no further from the float64 ones than segment-anything's own float32 outputs
    (×4, with eps32 as a floor)."""
    model = randomise(TwoWayTransformer(depth=2, embedding_dim=64, num_heads=8, mlp_dim=128))
    sam = sam_twin(model, SamTwoWayTransformer(depth=2, embedding_dim=64, num_heads=8, mlp_dim=128))
    image, image_pe, tokens = torch.randn(2, 64, 6, 7), torch.randn(2, 64, 6, 7), torch.randn(2, 9, 64)
    with torch.no_grad():
        queries32, keys32 = model(image, image_pe, tokens)
        sam32 = sam(image, image_pe, tokens)
        model.double(), sam.double()
        queries, keys = model(image.double(), image_pe.double(), tokens.double())
        sam_queries, sam_keys = sam(image.double(), image_pe.double(), tokens.double())
    assert queries.shape == (2, 9, 64) and keys.shape == (2, 42, 64)
    assert rel_err(queries, sam_queries) < float64_rel_tol(128)  # longest sum: the MLP's 128 hidden units
    assert rel_err(keys, sam_keys) < float64_rel_tol(128)
    for ours, theirs, exact in ((queries32, sam32[0], sam_queries), (keys32, sam32[1], sam_keys)):
        assert rel_err(ours, exact) <= 4 * rel_err(theirs, exact) + EPS32


def test_two_way_transformer_sam_names_and_shapes():
    model = TwoWayTransformer()
    assert set(model.state_dict()) == sam_transformer_keys(2)
    assert [layer.skip_first_layer_pe for layer in model.layers] == [True, False]
    assert model.layers[0].cross_attn_token_to_image.internal_dim == 128
    assert sum(p.numel() for p in model.parameters()) == 3_291_264  # segment-anything's count
    with torch.no_grad():
        queries, keys = model(torch.randn(1, DIM, 4, 4), torch.randn(1, DIM, 4, 4), torch.randn(1, 7, DIM))
    assert queries.shape == (1, 7, DIM) and keys.shape == (1, 16, DIM)


# ---------------------------------------------------------------- mask decoder


@pytest.fixture
def decoder():
    return MultiScaleMaskDecoder(transformer_dim=DIM, transformer=TwoWayTransformer(2, DIM, 8, 2048),
                                 stride4_chans=64, stride8_chans=128)


def prompts(enc, b):
    points = (torch.rand(b, 2, 2) * INPUT, torch.randint(0, 2, (b, 2)))
    return enc(points=points, boxes=None, masks=None)


@pytest.mark.parametrize('multimask, count', [(True, 3), (False, 1)])
def test_decoder_output_shapes(decoder, multimask, count):
    enc = prompt_encoder()
    sparse, dense = prompts(enc, 3)
    with torch.no_grad():
        masks, iou = decoder(image_embeddings=features(1), image_pe=enc.get_dense_pe(),
                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                             multimask_output=multimask)
    assert masks.shape == (3, count, 4 * GRID, 4 * GRID)
    assert iou.shape == (3, count)


def test_decoder_mask_selection_follows_sam(decoder):
    enc = prompt_encoder()
    sparse, dense = prompts(enc, 2)
    feats, pe = features(1), enc.get_dense_pe()
    with torch.no_grad():
        all_masks, all_iou = decoder.predict_masks(feats, pe, sparse, dense)
        multi = decoder(feats, pe, sparse, dense, multimask_output=True)
        single = decoder(feats, pe, sparse, dense, multimask_output=False)
    assert all_masks.shape == (2, 4, 4 * GRID, 4 * GRID) and all_iou.shape == (2, 4)
    assert torch.equal(multi[0], all_masks[:, 1:]) and torch.equal(multi[1], all_iou[:, 1:])
    assert torch.equal(single[0], all_masks[:, :1]) and torch.equal(single[1], all_iou[:, :1])


def test_decoder_shares_one_image_between_prompts(decoder):
    """Batch-1 features with B prompts = each prompt decoded alone = features repeated per prompt."""
    enc = prompt_encoder()
    sparse, dense = prompts(enc, 3)
    feats, pe = features(1), enc.get_dense_pe()
    with torch.no_grad():
        masks, iou = decoder(feats, pe, sparse, dense, multimask_output=True)
        for i in range(3):
            one = decoder(feats, pe, sparse[i:i + 1], dense[i:i + 1], multimask_output=True)
            torch.testing.assert_close(one[0], masks[i:i + 1], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(one[1], iou[i:i + 1], atol=1e-5, rtol=1e-5)
        repeated = Features(*(t.repeat_interleave(3, dim=0) for t in feats))
        again = decoder(repeated, pe, sparse, dense, multimask_output=True)
    torch.testing.assert_close(again[0], masks, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again[1], iou, atol=1e-5, rtol=1e-5)


def test_decoder_image_index_decodes_prompts_of_several_images(decoder):
    """Prompts of F images in one call (image_index) = each image's prompts decoded on its own features."""
    enc = prompt_encoder()
    sparse, dense = prompts(enc, 5)
    feats, pe = features(2), enc.get_dense_pe()
    index = torch.tensor([1, 0, 1, 1, 0])
    with torch.no_grad():
        masks, iou = decoder(feats, pe, sparse, dense, multimask_output=False, image_index=index)
        for image in (0, 1):
            rows = index == image
            one = Features(*(t[image:image + 1] for t in feats))
            alone = decoder(one, pe, sparse[rows], dense[rows], multimask_output=False)
            torch.testing.assert_close(alone[0], masks[rows], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(alone[1], iou[rows], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r'image_index values must lie in \[0, 2\)'):
        decoder(feats, pe, sparse, dense, multimask_output=False, image_index=index + 1)
    with pytest.raises(ValueError, match=r'image_index must have shape \(5,\)'):
        decoder(feats, pe, sparse, dense, multimask_output=False, image_index=index[:3])


def test_decoder_fusion_uses_both_maps(decoder):
    enc = prompt_encoder()
    sparse, dense = prompts(enc, 2)
    feats, pe = features(1), enc.get_dense_pe()
    with torch.no_grad():
        masks, iou = decoder(feats, pe, sparse, dense, multimask_output=True)
        for name in ('stride4', 'stride8'):
            changed = feats._replace(**{name: torch.zeros_like(getattr(feats, name))})
            other_masks, other_iou = decoder(changed, pe, sparse, dense, multimask_output=True)
            assert (other_masks - masks).abs().max() > 1e-3, name
            assert torch.equal(other_iou, iou)  # the IoU head sees the tokens only


def test_decoder_split_fusion_is_the_concatenated_convolution(decoder):
    """``image_fusion`` and ``_fuse`` run mix_feat_proj's first conv in an image part and a prompt part: same result
    as on the concatenation."""
    feats = features(2)
    upscaled = torch.randn(5, DIM // 8, 4 * GRID, 4 * GRID)
    index = torch.tensor([1, 0, 1, 1, 0])
    with torch.no_grad():
        fused = decoder._fuse(upscaled, decoder.image_fusion(feats.stride4, feats.stride8)[index])
        concat = torch.cat([upscaled, decoder.mr_feat_proj(feats.stride8)[index],
                            decoder.hr_feat_proj(feats.stride4)[index]], dim=1)
        expected = decoder.mix_feat_proj(concat)
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-4)


def test_decoder_without_fusion_is_sams_decoder(decoder):
    """With the last fusion conv zeroed the masks and IoU predictions are those of segment-anything's
    ``MaskDecoder`` with the same weights (float64; longest sum: the transformer MLP's 2048 units)."""
    randomise(decoder)
    with torch.no_grad():
        decoder.mix_feat_proj[-1].weight.zero_()
        decoder.mix_feat_proj[-1].bias.zero_()
    decoder.double()
    sam = sam_twin(decoder, SamMaskDecoder(transformer_dim=DIM, transformer=SamTwoWayTransformer(2, DIM, 8, 2048)))
    enc = prompt_encoder().double()
    sparse, dense = prompts(enc, 2)
    feats, pe = Features(*(t.double() for t in features(1))), enc.get_dense_pe()
    with torch.no_grad():
        masks, iou = decoder.predict_masks(feats, pe, sparse, dense)
        expected, expected_iou = sam.predict_masks(feats.embedding, pe, sparse, dense)
    assert masks.shape == expected.shape == (2, 4, 4 * GRID, 4 * GRID)
    assert rel_err(masks, expected) < float64_rel_tol(2048)
    assert rel_err(iou, expected_iou) < float64_rel_tol(2048)


def test_decoder_gradient_reaches_every_parameter(decoder):
    enc = prompt_encoder()
    sparse, dense = prompts(enc, 2)
    feats, pe = features(1), enc.get_dense_pe()
    loss = sum(out.square().mean() for flag in (True, False)
               for out in decoder(feats, pe, sparse.detach(), dense.detach(), multimask_output=flag))
    loss.backward()
    for name, p in decoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_decoder_rejects_plain_tensor_and_bad_features(decoder):
    enc = prompt_encoder()
    sparse, dense = prompts(enc, 3)
    pe = enc.get_dense_pe()
    with pytest.raises(TypeError, match='stride4'):
        decoder(torch.randn(1, DIM, GRID, GRID), pe, sparse, dense, multimask_output=True)
    with pytest.raises(TypeError, match='stride8'):
        decoder(namedtuple('Two', 'embedding stride4')(torch.randn(1, DIM, GRID, GRID), torch.randn(1, 64, 64, 64)),
                pe, sparse, dense, multimask_output=True)
    with pytest.raises(ValueError, match='stride8'):
        decoder(features(1, s8=64), pe, sparse, dense, multimask_output=True)
    with pytest.raises(ValueError, match='batch 2'):
        decoder(features(2), pe, sparse, dense, multimask_output=True)


def test_decoder_sam_names_and_parameter_count(decoder):
    keys = set(decoder.state_dict())
    sam_keys = sam_mask_decoder_keys()
    assert sam_keys <= keys
    assert {k.split('.')[0] for k in keys - sam_keys} == {'hr_feat_proj', 'mr_feat_proj', 'mix_feat_proj'}
    total = sum(p.numel() for p in decoder.parameters())
    fusion = sum(p.numel() for name in ('hr_feat_proj', 'mr_feat_proj', 'mix_feat_proj')
                 for p in getattr(decoder, name).parameters())
    assert total - fusion == 4_058_340  # segment-anything's mask decoder
    assert fusion == 180_896
    default = MultiScaleMaskDecoder()  # builds SAM's transformer itself
    assert set(default.state_dict()) == keys


# ---------------------------------------------------------------- fusion modes and the cached image fusion


def decoder_with(fusion):
    torch.manual_seed(0)
    return randomise(MultiScaleMaskDecoder(transformer_dim=DIM, transformer=TwoWayTransformer(2, DIM, 8, 2048),
                                           stride4_chans=64, stride8_chans=128, fusion=fusion))


def image_features(n=1):
    return ImageFeatures(*features(n))


def test_decoder_fusion_none_is_sams_decoder_and_takes_a_plain_embedding():
    """``fusion='none'`` has exactly segment-anything's ``MaskDecoder`` state dict, and its outputs (float64) on a
    plain embedding tensor or on ImageFeatures."""
    decoder = decoder_with('none').double()
    assert set(decoder.state_dict()) == sam_mask_decoder_keys()
    sam = sam_twin(decoder, SamMaskDecoder(transformer_dim=DIM, transformer=SamTwoWayTransformer(2, DIM, 8, 2048)))
    enc = prompt_encoder().double()
    sparse, dense = prompts(enc, 3)
    feats, pe = ImageFeatures(*(t.double() for t in features(1))), enc.get_dense_pe()
    with torch.no_grad():
        expected, expected_iou = sam(feats.embedding, pe, sparse, dense, multimask_output=True)
        for image in (feats.embedding, feats):
            masks, iou = decoder(image, pe, sparse, dense, multimask_output=True)
            assert rel_err(masks, expected) < float64_rel_tol(2048)
            assert rel_err(iou, expected_iou) < float64_rel_tol(2048)
    with pytest.raises(ValueError, match=f'must be \\(F, {DIM}, h, w\\)'):
        decoder(torch.randn(1, 3, GRID, GRID).double(), pe, sparse, dense, multimask_output=True)


def test_decoder_fusion_add_adds_one_image_map_per_prompt_mix():
    """``fusion='add'``: the masks differ from the same decoder without fusion by a per-prompt linear combination of
    the C/8 channels of G = mix_feat_proj(cat([mr_feat_proj(stride8), hr_feat_proj(stride4)])), G computed here from
    the modules. Float64 least squares per prompt: a difference outside G's channel span leaves a residual of the
    order of the difference itself; inside it, rounding only (32 channels x 4096 pixels, well conditioned)."""
    decoder = decoder_with('add').double()
    plain = MultiScaleMaskDecoder(transformer_dim=DIM, transformer=TwoWayTransformer(2, DIM, 8, 2048),
                                  fusion='none').double()
    plain.load_state_dict(decoder.state_dict(), strict=False)
    enc = prompt_encoder().double()
    sparse, dense = prompts(enc, 3)
    feats, pe = ImageFeatures(*(t.double() for t in features(1))), enc.get_dense_pe()
    with torch.no_grad():
        masks, _ = decoder.predict_masks(feats, pe, sparse, dense)
        without, _ = plain.predict_masks(feats.embedding, pe, sparse, dense)
        g = decoder.mix_feat_proj(torch.cat([decoder.mr_feat_proj(feats.stride8),
                                             decoder.hr_feat_proj(feats.stride4)], 1))
    basis = g.reshape(DIM // 8, -1).T  # (4096, 32)
    for diff in (masks - without):
        diff = diff.reshape(diff.shape[0], -1).T  # (4096, tokens)
        coeffs = torch.linalg.lstsq(basis, diff).solution
        assert diff.norm() > 1e-2
        assert rel_err(basis @ coeffs, diff) < 1e-10


@pytest.mark.parametrize('fusion', ['mix', 'add', 'none'])
def test_fuse_image_caches_the_image_part(fusion):
    """Decoding on ``fuse_image(features)`` (one image shared, several images with image_index, one image selected)
    gives the masks of the uncached call, without running the image-only projections again."""
    decoder = decoder_with(fusion)
    enc = prompt_encoder()
    sparse, dense = prompts(enc, 5)
    feats, pe = image_features(2), enc.get_dense_pe()
    index = torch.tensor([1, 0, 1, 1, 0])
    with torch.no_grad():
        expected = decoder(feats, pe, sparse, dense, multimask_output=True, image_index=index)
        expected_one = decoder(feats.select(1), pe, sparse, dense, multimask_output=False)
        fused = decoder.fuse_image(feats)
        assert (fused.fusion is None) == (fusion == 'none')
        if fusion != 'none':
            decoder.hr_feat_proj = decoder.mr_feat_proj = None  # a second run of the projections would fail
        masks = decoder(fused, pe, sparse, dense, multimask_output=True, image_index=index)
        one = decoder(fused.select(1), pe, sparse, dense, multimask_output=False)
    for actual, wanted in ((masks, expected), (one, expected_one)):
        torch.testing.assert_close(actual[0], wanted[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(actual[1], wanted[1], atol=1e-6, rtol=1e-6)


def test_gather_rows_gradient_matches_index_select_with_channels_last_gradient():
    x = torch.randn(4, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([3, 0, 3, 1, 1, 3])
    grad = torch.randn(6, 6, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    gathered = gather_rows(x, index)
    assert torch.equal(gathered, x.detach()[index])
    expected, = torch.autograd.grad(x.index_select(0, index), x, grad)
    actual, = torch.autograd.grad(gathered, x, grad)
    assert rel_err(actual, expected) < 4 * EPS64  # at most 3 rows summed per entry, in another order


def test_decoder_rejects_unknown_fusion():
    with pytest.raises(ValueError, match="fusion must be one of \\('mix', 'add', 'none'\\), got 'sum'"):
        MultiScaleMaskDecoder(fusion='sum')
