"""The fused backward passes of the VRWKV layers (Q-Shift mixing, squared ReLU) against plain autograd of
the formulas they replace: identical forward outputs, matching gradients, unchanged model outputs."""
import pytest
import torch

from vision_rwkv.layers import channel_mix, q_shift, shift, spatial_mix
from vision_rwkv.models.vrwkv import VRWKV

from conftest import rel_err


def q_shift_by_slices(x, grid, shift_pixel=1, gamma=0.25):
    """The official q_shift (OpenGVLab/Vision-RWKV, classification/mmcls_custom/models/backbones/vrwkv.py)
    transcribed: (B, C, H, W) zeros plus slice assignments at channel boundaries int(C*gamma*n)
    (autograd through the slices)."""
    B, N, C = x.shape
    H, W = grid
    s = shift_pixel
    x = x.transpose(1, 2).reshape(B, C, H, W)
    out = torch.zeros_like(x)
    out[:, 0:int(C * gamma), :, s:W] = x[:, 0:int(C * gamma), :, 0:W - s]
    out[:, int(C * gamma):int(C * gamma * 2), :, 0:W - s] = x[:, int(C * gamma):int(C * gamma * 2), :, s:W]
    out[:, int(C * gamma * 2):int(C * gamma * 3), s:H, :] = x[:, int(C * gamma * 2):int(C * gamma * 3), 0:H - s, :]
    out[:, int(C * gamma * 3):int(C * gamma * 4), 0:H - s, :] = x[:, int(C * gamma * 3):int(C * gamma * 4), s:H, :]
    out[:, int(C * gamma * 4):, ...] = x[:, int(C * gamma * 4):, ...]
    return out.flatten(2).transpose(1, 2)


def shift_mix_by_autograd(x, grid, mixes, shift_pixel, gamma, head_size=None):
    assert head_size is None, 'whole-channel Q-Shift only (the head-wise one is tested in test_vrwkv6.py)'
    xx = q_shift_by_slices(x, grid, shift_pixel, gamma)
    return tuple(torch.lerp(xx, x, m.to(x.dtype)) for m in mixes)


class SquaredReLUByAutograd:
    apply = staticmethod(lambda x: torch.square(torch.relu(x)))


# C = 9, 30 (gamma 1/4) and 10 (gamma 0.1): the official boundaries int(C*gamma*n) differ from n*int(C*gamma)
SHAPES = [(2, 5, 6, 9, 1, 0.25), (1, 3, 4, 8, 2, 0.25), (2, 4, 4, 10, 1, 0.1), (2, 14, 14, 64, 1, 0.25),
          (2, 4, 5, 30, 1, 0.25), (1, 5, 3, 30, 2, 0.25)]


def test_q_shift_groups_follow_official_boundaries():
    """C = 30, gamma = 1/4: groups [0, 7), [7, 15), [15, 22), [22, 30) (official), not 7-wide groups and a
    2-channel pass-through."""
    assert shift._group_bounds(30, 0.25) == (0, 7, 15, 22, 30)
    assert [int(30 * 0.25 * n) for n in range(5)] != [n * int(30 * 0.25) for n in range(5)]
    x = torch.randn(1, 4 * 5, 30)
    out = q_shift(x, (4, 5))
    assert torch.equal(out, q_shift_by_slices(x, (4, 5)))
    below = x.view(1, 4, 5, 30)[:, 1:, :, 28:]  # channels 28, 29 come from the patch below
    assert torch.equal(out.view(1, 4, 5, 30)[:, :-1, :, 28:], below)


@pytest.mark.parametrize('B,H,W,C,s,gamma', SHAPES)
def test_q_shift_matches_slices(B, H, W, C, s, gamma):
    x = torch.randn(B, H * W, C)
    assert torch.equal(q_shift(x, (H, W), s, gamma), q_shift_by_slices(x, (H, W), s, gamma))


@pytest.mark.parametrize('B,H,W,C,s,gamma', SHAPES)
@pytest.mark.parametrize('n_mixes', [2, 3])
def test_shift_mix_matches_autograd(B, H, W, C, s, gamma, n_mixes):
    """Bitwise the same outputs; gradients of x and of the mixing ratios to float64 rounding."""
    x = torch.randn(B, H * W, C, dtype=torch.float64, requires_grad=True)
    mixes = [torch.rand(1, 1, C, dtype=torch.float64, requires_grad=True) for _ in range(n_mixes)]
    out = shift.shift_mix(x, (H, W), mixes, s, gamma)
    ref = shift_mix_by_autograd(x, (H, W), mixes, s, gamma)
    assert all(torch.equal(a, b) for a, b in zip(out, ref))
    gs = [torch.randn_like(o) for o in out]
    grads = torch.autograd.grad(out, [x] + mixes, gs)
    grads_ref = torch.autograd.grad(ref, [x] + mixes, gs)
    for g, g_ref in zip(grads, grads_ref):
        assert g.shape == g_ref.shape and rel_err(g, g_ref) < 1e-13


def test_shift_mix_gradcheck_and_low_precision_inputs():
    x = torch.randn(2, 12, 8, dtype=torch.float64, requires_grad=True)
    mixes = [torch.rand(1, 1, 8, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(lambda x, *m: shift.shift_mix(x, (3, 4), m, 1, 0.25), (x, *mixes))
    # bfloat16 tokens with float32 ratios (autocast): same outputs, gradients in each input's dtype
    xb = x.detach().bfloat16().requires_grad_()
    m32 = [m.detach().float().requires_grad_() for m in mixes]
    out = shift.shift_mix(xb, (3, 4), m32, 1, 0.25)
    assert all(torch.equal(a, b) for a, b in zip(out, shift_mix_by_autograd(xb, (3, 4), m32, 1, 0.25)))
    grads = torch.autograd.grad(out, [xb] + m32, [torch.ones_like(o) for o in out])
    assert grads[0].dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in grads[1:])
    grads_ref = torch.autograd.grad(shift_mix_by_autograd(x, (3, 4), mixes, 1, 0.25), [x] + mixes,
                                    [torch.ones_like(o, dtype=torch.float64) for o in out])
    for g, g_ref in zip(grads, grads_ref):  # bfloat16: 8 bits of mantissa, sums over 24 tokens
        assert rel_err(g, g_ref) < 2e-2


def test_shift_mix_rejects_bad_layout():
    x = torch.randn(1, 12, 8)
    with pytest.raises(ValueError, match='does not match'):
        shift.shift_mix(x, (3, 5), (torch.rand(1, 1, 8),), 1, 0.25)
    with pytest.raises(ValueError, match='at most 1/4'):
        shift.shift_mix(x, (3, 4), (torch.rand(1, 1, 8),), 1, 0.3)


def test_squared_relu_matches_autograd():
    x = torch.randn(4, 7, 33, requires_grad=True)
    y = channel_mix._SquaredReLU.apply(x)
    y_ref = SquaredReLUByAutograd.apply(x)
    assert torch.equal(y, y_ref)
    g = torch.randn_like(y)
    assert torch.equal(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y_ref, x, g)[0])


def test_model_outputs_and_gradients_unchanged(monkeypatch):
    """A small VRWKV: the same logits as with plain autograd layers, and the same parameter gradients."""
    model = VRWKV(img_size=32, patch_size=8, embed_dim=32, depth=2, num_classes=5).train()
    x = torch.randn(2, 3, 32, 32)

    def logits_and_grads():
        model.zero_grad(set_to_none=True)
        y = model(x)
        y.square().sum().backward()
        return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    y, grads = logits_and_grads()
    monkeypatch.setattr(spatial_mix, 'shift_mix', shift_mix_by_autograd)
    monkeypatch.setattr(channel_mix, 'shift_mix', shift_mix_by_autograd)
    monkeypatch.setattr(channel_mix, '_SquaredReLU', SquaredReLUByAutograd)
    y_ref, grads_ref = logits_and_grads()
    assert torch.equal(y, y_ref)
    assert grads.keys() == grads_ref.keys()
    for name in grads:  # float32 sums in another order
        assert rel_err(grads[name], grads_ref[name]) < 1e-5, name
