"""RWKV-SAM prompt encoder, two-way transformer and multiscale mask decoder (segment-anything semantics).

Small sizes: a 16×16 image embedding of a 256×256 input (stride 16), so mask prompts and output
masks are 64×64 and the stride-4 / stride-8 maps 64×64 / 32×32.
"""
import math
from collections import namedtuple

import pytest
import torch
import torch.nn as nn

from vision_rwkv.sam.modeling.mask_decoder import MultiScaleMaskDecoder
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


def fourier(pe_layer, xy, size):
    """float64 random Fourier features of (..., 2) x, y pixel positions in an (H, W) frame."""
    g = pe_layer.positional_encoding_gaussian_matrix.double()
    h, w = size
    p = torch.stack([xy[..., 0].double() / w, xy[..., 1].double() / h], dim=-1)
    proj = 2 * math.pi * ((2 * p - 1) @ g)
    return torch.cat([proj.sin(), proj.cos()], dim=-1)


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


def test_prompt_encoder_token_values():
    """Each token = Fourier encoding of the pixel centre + its type embedding; padding = not_a_point_embed."""
    enc = prompt_encoder()
    coords = torch.tensor([[[30., 40.], [200., 10.], [77., 77.]]])
    labels = torch.tensor([[1, 0, -1]])
    with torch.no_grad():
        sparse, _ = enc(points=(coords, labels), boxes=None, masks=None)
        assert sparse.shape == (1, 4, DIM)
        pe = fourier(enc.pe_layer, coords[0] + 0.5, (INPUT, INPUT))
        torch.testing.assert_close(sparse[0, 0].double(), pe[0] + enc.point_embeddings[1].weight[0].double(),
                                   atol=1e-4, rtol=0)
        torch.testing.assert_close(sparse[0, 1].double(), pe[1] + enc.point_embeddings[0].weight[0].double(),
                                   atol=1e-4, rtol=0)
        # the given padding point and the appended one: no positional term at all
        assert torch.equal(sparse[0, 2], enc.not_a_point_embed.weight[0])
        assert torch.equal(sparse[0, 3], enc.not_a_point_embed.weight[0])

        box = torch.tensor([[10., 20., 100., 120.]])
        sparse, _ = enc(points=(coords[:, :1], labels[:, :1]), boxes=box, masks=None)
        assert sparse.shape == (1, 3, DIM)  # no padding point with a box
        corners = fourier(enc.pe_layer, box.reshape(2, 2) + 0.5, (INPUT, INPUT))
        torch.testing.assert_close(sparse[0, 1].double(), corners[0] + enc.point_embeddings[2].weight[0].double(),
                                   atol=1e-4, rtol=0)
        torch.testing.assert_close(sparse[0, 2].double(), corners[1] + enc.point_embeddings[3].weight[0].double(),
                                   atol=1e-4, rtol=0)

        # float labels (segment-anything's predictor passes them as given) and float64 coordinates
        same, _ = enc(points=(coords.double(), labels.float()), boxes=None, masks=None)
        assert same.dtype == torch.float32
        torch.testing.assert_close(same, enc(points=(coords, labels), boxes=None, masks=None)[0])


def test_dense_pe_is_the_point_encoding_of_cell_centres():
    enc = prompt_encoder()
    dense_pe = enc.get_dense_pe()
    assert dense_pe.shape == (1, DIM, GRID, GRID)
    ys, xs = torch.meshgrid(torch.arange(GRID) + 0.5, torch.arange(GRID) + 0.5, indexing='ij')
    expected = fourier(enc.pe_layer, torch.stack([xs, ys], -1), (GRID, GRID)).permute(2, 0, 1)
    torch.testing.assert_close(dense_pe[0].double(), expected, atol=1e-4, rtol=0)
    # a point at the centre of embedding cell (i, j) of the input frame gets the same encoding
    stride = INPUT // GRID
    i, j = 5, 11
    point = torch.tensor([[[(j + 0.5) * stride - 0.5, (i + 0.5) * stride - 0.5]]])
    with torch.no_grad():
        token = enc(points=(point, torch.tensor([[1]])), boxes=None, masks=None)[0][0, 0]
    torch.testing.assert_close(token - enc.point_embeddings[1].weight[0], dense_pe[0, :, i, j], atol=1e-4, rtol=0)


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


def attention_reference(attn, q, k, v):
    """float64 softmax(QKᵀ/√d)V per head, with the module's weights."""
    def proj(layer, x):
        return x.double() @ layer.weight.double().T + layer.bias.double()

    heads = attn.num_heads
    q, k, v = proj(attn.q_proj, q), proj(attn.k_proj, k), proj(attn.v_proj, v)
    b, nq, d = q.shape
    nk = k.shape[1]
    q = q.reshape(b, nq, heads, d // heads).transpose(1, 2)
    k = k.reshape(b, nk, heads, d // heads).transpose(1, 2)
    v = v.reshape(b, nk, heads, d // heads).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, nq, d)
    return proj(attn.out_proj, out)


@pytest.mark.parametrize('downsample_rate', [1, 2])
def test_attention_matches_explicit_softmax(downsample_rate):
    attn = Attention(64, 8, downsample_rate=downsample_rate)
    assert attn.internal_dim == 64 // downsample_rate
    q, k, v = torch.randn(2, 5, 64), torch.randn(2, 37, 64), torch.randn(2, 37, 64)
    with torch.no_grad():
        out = attn(q=q, k=k, v=v)
    assert out.shape == (2, 5, 64)
    assert rel_err(out, attention_reference(attn, q, k, v)) < 1e-5


def test_attention_rejects_heads_not_dividing_width():
    with pytest.raises(ValueError, match='num_heads'):
        Attention(40, 8, downsample_rate=2)


def two_way_reference(model, image, image_pe, tokens):
    """float64 two-way transformer written out from segment-anything's description."""
    def ln(norm, x):
        return nn.functional.layer_norm(x, x.shape[-1:], norm.weight.double(), norm.bias.double(), norm.eps)

    def mlp(block, x):
        h = torch.relu(x @ block.lin1.weight.double().T + block.lin1.bias.double())
        return h @ block.lin2.weight.double().T + block.lin2.bias.double()

    keys = image.double().flatten(2).transpose(1, 2)
    key_pe = image_pe.double().flatten(2).transpose(1, 2)
    query_pe = tokens.double()
    queries = query_pe
    for i, layer in enumerate(model.layers):
        if i == 0:  # first layer: no positional term and no residual in the self-attention
            queries = attention_reference(layer.self_attn, queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + attention_reference(layer.self_attn, q, q, queries)
        queries = ln(layer.norm1, queries)
        queries = ln(layer.norm2, queries + attention_reference(layer.cross_attn_token_to_image,
                                                                queries + query_pe, keys + key_pe, keys))
        queries = ln(layer.norm3, queries + mlp(layer.mlp, queries))
        keys = ln(layer.norm4, keys + attention_reference(layer.cross_attn_image_to_token,
                                                          keys + key_pe, queries + query_pe, queries))
    queries = ln(model.norm_final_attn, queries + attention_reference(model.final_attn_token_to_image,
                                                                      queries + query_pe, keys + key_pe, keys))
    return queries, keys


def test_two_way_transformer_matches_reference():
    model = TwoWayTransformer(depth=2, embedding_dim=64, num_heads=8, mlp_dim=128)
    image, image_pe, tokens = torch.randn(2, 64, 6, 7), torch.randn(2, 64, 6, 7), torch.randn(2, 9, 64)
    with torch.no_grad():
        queries, keys = model(image, image_pe, tokens)
        ref_queries, ref_keys = two_way_reference(model, image, image_pe, tokens)
    assert queries.shape == (2, 9, 64) and keys.shape == (2, 42, 64)
    assert rel_err(queries, ref_queries) < 1e-5
    assert rel_err(keys, ref_keys) < 1e-5


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
    """``_fuse`` runs mix_feat_proj's first conv in an image part and a prompt part: same result as on the concat."""
    feats = features(2)
    upscaled = torch.randn(5, DIM // 8, 4 * GRID, 4 * GRID)
    index = torch.tensor([1, 0, 1, 1, 0])
    with torch.no_grad():
        fused = decoder._fuse(upscaled, feats.stride8, feats.stride4, index)
        concat = torch.cat([upscaled, decoder.mr_feat_proj(feats.stride8)[index],
                            decoder.hr_feat_proj(feats.stride4)[index]], dim=1)
        expected = decoder.mix_feat_proj(concat)
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-4)


def test_decoder_without_fusion_is_sams_decoder(decoder):
    """With the last fusion conv zeroed the masks are SAM's: hypernetwork(tokens) · upscale(image tokens)."""
    with torch.no_grad():
        decoder.mix_feat_proj[-1].weight.zero_()
        decoder.mix_feat_proj[-1].bias.zero_()
    enc = prompt_encoder()
    sparse, dense = prompts(enc, 2)
    feats, pe = features(1), enc.get_dense_pe()
    with torch.no_grad():
        masks, iou = decoder.predict_masks(feats, pe, sparse, dense)
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], 0)[None].expand(2, -1, -1)
        tokens = torch.cat([tokens, sparse], dim=1)
        src = feats.embedding.repeat_interleave(2, dim=0) + dense
        hs, keys = decoder.transformer(src, pe.repeat_interleave(2, dim=0), tokens)
        upscaled = decoder.output_upscaling(keys.transpose(1, 2).reshape(src.shape))
        hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1)
        expected = torch.einsum('btc,bchw->bthw', hyper, upscaled)
        expected_iou = decoder.iou_prediction_head(hs[:, 0])
    torch.testing.assert_close(masks, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou, expected_iou)


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
