"""Test-only port of the official VRWKV6 classifiers (OpenGVLab/Vision-RWKV), the oracle that official-format
VRWKV6 checkpoints loaded into ``vision_rwkv`` reproduce the official logits.

Written from the upstream code, not from ``vision_rwkv``: module and parameter names, constructor arguments,
the 'fancy' initialisation and the order of operations are the official ones, so ``state_dict()`` of the
classifier *is* the released checkpoint layout (mmcls ``ImageClassifier``: ``backbone.*``, ``head.fc.*``).
Sources (upstream paths):

* ``classification/mmcls_custom/models/backbones/vrwkv6.py``: ``q_shift_multihead``, ``VRWKV_SpatialMix_V6``,
  ``VRWKV_ChannelMix``, ``Block``, ``VRWKV6``;
* ``classification/mmcls_custom/models/backbones/cuda_v6/wkv6_cuda.cu``: ``kernel_forward``, ported below as
  ``wkv6_kernel_forward`` (its two loops over the tokens, every (batch, head, thread) at once);
* ``classification/configs/vrwkv6/vrwkv6_{tiny,small,base}_*_in1k.py``: the backbone arguments, a
  ``GlobalAveragePooling`` neck, a ``LinearClsHead`` and ``init_cfg`` TruncNormal(Linear, std 0.02, bias 0) +
  Constant(LayerNorm, 1, bias 0).

Differences from upstream, without effect on the eval-mode forward: no mmcv/mmcls base classes, no gradient
checkpointing (``with_cp``), no class token (``with_cls_token``: unused by the released models), ``DropPath``
from timm; the mmcv pieces (``PatchEmbed`` with 'corner' padding, ``resize_pos_embed``, the neck and head) are
those of ``official_vrwkv``. The WKV kernel runs in float64 (upstream: float32 CUDA) and its output is cast to
float32, the dtype of the official ``WKV_6.forward`` output (kept in float64 when the port runs in float64).
"""
import math
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from official_vrwkv import GlobalAveragePooling, LinearClsHead, PatchEmbed, official_checkpoint, resize_pos_embed

__all__ = ['OFFICIAL_V6_ARCHS', 'OfficialVRWKV6Classifier', 'VRWKV_SpatialMix_V6', 'build_official_v6_classifier',
           'official_checkpoint', 'official_init_weights_', 'perturb_v6_', 'q_shift_multihead', 'wkv6_kernel_forward']

HEAD_SIZE = 64
KERNEL_DTYPE = torch.float64  # the port's arithmetic for the WKV kernel (upstream: float32)

# Backbone arguments of the released classifiers (classification/configs/vrwkv6/*.py; drop path is training-only).
OFFICIAL_V6_ARCHS: Dict[str, dict] = {
    'tiny': dict(img_size=224, patch_size=16, embed_dims=192, num_heads=3),
    'small': dict(img_size=224, patch_size=16, embed_dims=384, num_heads=6, post_norm=True, init_values=1e-5),
    'base': dict(img_size=224, patch_size=16, embed_dims=768, num_heads=12, post_norm=True, init_values=1e-5),
}


# ---- the CUDA kernel (cuda_v6/wkv6_cuda.cu, kernel_forward) -------------------------------------------
def wkv6_kernel_forward(B: int, T: int, C: int, H: int, r, k, v, ew, u) -> torch.Tensor:
    """``kernel_forward``: one block per (b, h), thread i holds value channel i and a state over the key channels j.

    First loop, t = T-1 .. 0: y[t] = sum_j r[t,j] state2[j]; then state2[j] = state2[j] * exp(ew[t,j]) + k[t,j] v[t,i].
    Second loop, t = 0 .. T-1: y[t] += sum_j r[t,j] (u[j] k[t,j] v[t,i] + state1[j]); then the same update of
    state1. ``ew`` is what ``WKV_6.forward`` hands the kernel: -exp(w). Arithmetic in KERNEL_DTYPE.
    """
    N = C // H
    r, k, v, ew = (x.to(KERNEL_DTYPE).reshape(B, T, H, N) for x in (r, k, v, ew))
    u = u.to(KERNEL_DTYPE).reshape(H, N)
    y = torch.zeros(B, T, H, N, dtype=KERNEL_DTYPE)
    state2 = torch.zeros(B, H, N, N, dtype=KERNEL_DTYPE)  # [b, h, thread i, key j]
    for t in range(T - 1, -1, -1):
        w_t = torch.exp(ew[:, t])  # w[j] = exp(_w[t]) in shared memory
        kv = k[:, t, :, None, :] * v[:, t, :, :, None]  # x = k_[j] * v (v: the thread's channel i)
        y[:, t] = (r[:, t, :, None, :] * state2).sum(-1)
        state2 = state2 * w_t[:, :, None, :] + kv
    state1 = torch.zeros(B, H, N, N, dtype=KERNEL_DTYPE)
    for t in range(T):
        w_t = torch.exp(ew[:, t])
        kv = k[:, t, :, None, :] * v[:, t, :, :, None]
        y[:, t] += (r[:, t, :, None, :] * (u[None, :, None, :] * kv + state1)).sum(-1)
        state1 = state1 * w_t[:, :, None, :] + kv
    return y.reshape(B, T, C)


def RUN_CUDA_RWKV6(B, T, C, H, r, k, v, w, u):
    """``WKV_6.forward``: ew = -exp(w.float()), the kernel, a float32 y (float64 when the whole port runs in
    float64, to measure the rounding of float32 runs)."""
    assert HEAD_SIZE == C // H
    ew = -torch.exp(w.to(KERNEL_DTYPE))
    y = wkv6_kernel_forward(B, T, C, H, r, k, v, ew, u)
    return y if r.dtype == torch.float64 else y.float()


# ---- backbone (classification/mmcls_custom/models/backbones/vrwkv6.py) -------------------------------
def q_shift_multihead(input, shift_pixel=1, head_dim=HEAD_SIZE, patch_resolution=None):
    B, N, C = input.shape
    assert C % head_dim == 0
    assert head_dim % 4 == 0
    input = input.transpose(1, 2).reshape(B, -1, head_dim, patch_resolution[0], patch_resolution[1])
    B, _, _, H, W = input.shape
    output = torch.zeros_like(input)
    output[:, :, 0:int(head_dim * 1 / 4), :, shift_pixel:W] = input[:, :, 0:int(head_dim * 1 / 4), :, 0:W - shift_pixel]
    output[:, :, int(head_dim / 4):int(head_dim / 2), :, 0:W - shift_pixel] = \
        input[:, :, int(head_dim / 4):int(head_dim / 2), :, shift_pixel:W]
    output[:, :, int(head_dim / 2):int(head_dim / 4 * 3), shift_pixel:H, :] = \
        input[:, :, int(head_dim / 2):int(head_dim / 4 * 3), 0:H - shift_pixel, :]
    output[:, :, int(head_dim * 3 / 4):int(head_dim), 0:H - shift_pixel, :] = \
        input[:, :, int(head_dim * 3 / 4):int(head_dim), shift_pixel:H, :]
    return output.reshape(B, C, N).transpose(1, 2)


class VRWKV_SpatialMix_V6(nn.Module):
    def __init__(self, n_embd, n_head, n_layer, layer_id, shift_mode='q_shift_multihead', shift_pixel=1,
                 init_mode='fancy', key_norm=False):
        super().__init__()
        self.layer_id = layer_id
        self.n_layer = n_layer
        self.n_embd = n_embd
        self.attn_sz = n_embd
        self.n_head = n_head
        self.head_size = self.attn_sz // self.n_head
        assert self.head_size == HEAD_SIZE
        self._init_weights(init_mode)
        self.shift_pixel = shift_pixel
        assert shift_mode == 'q_shift_multihead'
        self.shift_func = q_shift_multihead
        self.key = nn.Linear(self.n_embd, self.attn_sz, bias=False)
        self.value = nn.Linear(self.n_embd, self.attn_sz, bias=False)
        self.receptance = nn.Linear(self.n_embd, self.attn_sz, bias=False)
        self.gate = nn.Linear(self.n_embd, self.attn_sz, bias=False)
        self.key_norm = nn.LayerNorm(n_embd) if key_norm else None
        self.output = nn.Linear(self.attn_sz, n_embd, bias=False)
        self.ln_x = nn.GroupNorm(self.n_head, self.attn_sz, eps=1e-5)

    def _init_weights(self, init_mode):
        if init_mode != 'fancy':
            raise NotImplementedError
        with torch.no_grad():
            ratio_0_to_1 = self.layer_id / (self.n_layer - 1)  # 0 to 1
            ratio_1_to_almost0 = 1.0 - (self.layer_id / self.n_layer)  # 1 to ~0
            ddd = torch.ones(1, 1, self.n_embd)
            for i in range(self.n_embd):
                ddd[0, 0, i] = i / self.n_embd
            self.time_maa_x = nn.Parameter(1.0 - torch.pow(ddd, ratio_1_to_almost0))
            self.time_maa_w = nn.Parameter(1.0 - torch.pow(ddd, ratio_1_to_almost0))
            self.time_maa_k = nn.Parameter(1.0 - torch.pow(ddd, ratio_1_to_almost0))
            self.time_maa_v = nn.Parameter(1.0 - (torch.pow(ddd, ratio_1_to_almost0) + 0.3 * ratio_0_to_1))
            self.time_maa_r = nn.Parameter(1.0 - torch.pow(ddd, 0.5 * ratio_1_to_almost0))
            self.time_maa_g = nn.Parameter(1.0 - torch.pow(ddd, 0.5 * ratio_1_to_almost0))
            TIME_MIX_EXTRA_DIM = 32
            self.time_maa_w1 = nn.Parameter(torch.zeros(self.n_embd, TIME_MIX_EXTRA_DIM * 5).uniform_(-1e-4, 1e-4))
            self.time_maa_w2 = nn.Parameter(torch.zeros(5, TIME_MIX_EXTRA_DIM, self.n_embd).uniform_(-1e-4, 1e-4))
            decay_speed = torch.ones(self.attn_sz)
            for n in range(self.attn_sz):
                decay_speed[n] = -6 + 5 * (n / (self.attn_sz - 1)) ** (0.7 + 1.3 * ratio_0_to_1)
            self.time_decay = nn.Parameter(decay_speed.reshape(1, 1, self.attn_sz))
            TIME_DECAY_EXTRA_DIM = 64
            self.time_decay_w1 = nn.Parameter(torch.zeros(self.n_embd, TIME_DECAY_EXTRA_DIM).uniform_(-1e-4, 1e-4))
            self.time_decay_w2 = nn.Parameter(torch.zeros(TIME_DECAY_EXTRA_DIM, self.attn_sz).uniform_(-1e-4, 1e-4))
            tmp = torch.zeros(self.attn_sz)
            for n in range(self.attn_sz):
                zigzag = ((n + 1) % 3 - 1) * 0.1
                tmp[n] = ratio_0_to_1 * (1 - (n / (self.attn_sz - 1))) + zigzag
            self.time_faaaa = nn.Parameter(tmp.reshape(self.n_head, self.head_size))

    def jit_func(self, x, patch_resolution):
        B, T, C = x.size()
        xx = self.shift_func(x, self.shift_pixel, patch_resolution=patch_resolution) - x
        xxx = x + xx * self.time_maa_x  # [B, T, C]
        xxx = torch.tanh(xxx @ self.time_maa_w1).view(B * T, 5, -1).transpose(0, 1)
        xxx = torch.bmm(xxx, self.time_maa_w2).view(5, B, T, -1)
        mw, mk, mv, mr, mg = xxx.unbind(dim=0)
        xw = x + xx * (self.time_maa_w + mw)
        xk = x + xx * (self.time_maa_k + mk)
        xv = x + xx * (self.time_maa_v + mv)
        xr = x + xx * (self.time_maa_r + mr)
        xg = x + xx * (self.time_maa_g + mg)
        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        g = F.silu(self.gate(xg))
        ww = torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2
        w = self.time_decay + ww
        return r, k, v, g, w

    def jit_func_2(self, x, g):
        B, T, C = x.size()
        x = x.view(B * T, C)
        x = self.ln_x(x).view(B, T, C)
        x = self.output(x * g)
        return x

    def forward(self, x, patch_resolution=None):
        B, T, C = x.size()
        r, k, v, g, w = self.jit_func(x, patch_resolution)
        x = RUN_CUDA_RWKV6(B, T, C, self.n_head, r, k, v, w, u=self.time_faaaa)
        if self.key_norm is not None:
            x = self.key_norm(x)
        return self.jit_func_2(x, g)


class VRWKV_ChannelMix(nn.Module):
    def __init__(self, n_embd, n_head, n_layer, layer_id, shift_mode='q_shift_multihead', shift_pixel=1,
                 hidden_rate=4, init_mode='fancy', key_norm=False):
        super().__init__()
        self.layer_id = layer_id
        self.n_layer = n_layer
        self.n_embd = n_embd
        self.attn_sz = n_embd
        self.n_head = n_head
        self.head_size = self.attn_sz // self.n_head
        assert self.head_size == HEAD_SIZE
        self._init_weights(init_mode)
        self.shift_pixel = shift_pixel
        assert shift_mode == 'q_shift_multihead'
        self.shift_func = q_shift_multihead
        hidden_sz = hidden_rate * n_embd
        self.key = nn.Linear(n_embd, hidden_sz, bias=False)
        self.key_norm = nn.LayerNorm(hidden_sz) if key_norm else None
        self.receptance = nn.Linear(n_embd, n_embd, bias=False)
        self.value = nn.Linear(hidden_sz, n_embd, bias=False)

    def _init_weights(self, init_mode):
        if init_mode != 'fancy':
            raise NotImplementedError
        with torch.no_grad():
            ratio_1_to_almost0 = (1.0 - (self.layer_id / self.n_layer))  # 1 to ~0
            x = torch.ones(1, 1, self.n_embd)
            for i in range(self.n_embd):
                x[0, 0, i] = i / self.n_embd
            self.spatial_mix_k = nn.Parameter(torch.pow(x, ratio_1_to_almost0))
            self.spatial_mix_r = nn.Parameter(torch.pow(x, ratio_1_to_almost0))

    def forward(self, x, patch_resolution=None):
        xx = self.shift_func(x, self.shift_pixel, patch_resolution=patch_resolution)
        xk = x * self.spatial_mix_k + xx * (1 - self.spatial_mix_k)
        xr = x * self.spatial_mix_r + xx * (1 - self.spatial_mix_r)
        k = self.key(xk)
        k = torch.square(torch.relu(k))
        if self.key_norm is not None:
            k = self.key_norm(k)
        kv = self.value(k)
        return torch.sigmoid(self.receptance(xr)) * kv


class Block(nn.Module):
    def __init__(self, n_embd, n_head, n_layer, layer_id, shift_mode='q_shift_multihead', shift_pixel=1, drop_path=0.,
                 hidden_rate=4, init_mode='fancy', init_values=None, post_norm=False, key_norm=False):
        super().__init__()
        self.layer_id = layer_id
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        if self.layer_id == 0:
            self.ln0 = nn.LayerNorm(n_embd)
        self.att = VRWKV_SpatialMix_V6(n_embd, n_head, n_layer, layer_id, shift_mode, shift_pixel, init_mode,
                                       key_norm=key_norm)
        self.ffn = VRWKV_ChannelMix(n_embd, n_head, n_layer, layer_id, shift_mode, shift_pixel, hidden_rate,
                                    init_mode, key_norm=key_norm)
        self.layer_scale = (init_values is not None)
        self.post_norm = post_norm
        if self.layer_scale:
            self.gamma1 = nn.Parameter(init_values * torch.ones((n_embd)), requires_grad=True)
            self.gamma2 = nn.Parameter(init_values * torch.ones((n_embd)), requires_grad=True)

    def forward(self, x, patch_resolution=None):
        if self.layer_id == 0:
            x = self.ln0(x)
        if self.post_norm:
            if self.layer_scale:
                x = x + self.drop_path(self.gamma1 * self.ln1(self.att(x, patch_resolution)))
                x = x + self.drop_path(self.gamma2 * self.ln2(self.ffn(x, patch_resolution)))
            else:
                x = x + self.drop_path(self.ln1(self.att(x, patch_resolution)))
                x = x + self.drop_path(self.ln2(self.ffn(x, patch_resolution)))
        else:
            if self.layer_scale:
                x = x + self.drop_path(self.gamma1 * self.att(self.ln1(x), patch_resolution))
                x = x + self.drop_path(self.gamma2 * self.ffn(self.ln2(x), patch_resolution))
            else:
                x = x + self.drop_path(self.att(self.ln1(x), patch_resolution))
                x = x + self.drop_path(self.ffn(self.ln2(x), patch_resolution))
        return x


class OfficialVRWKV6(nn.Module):
    """The official ``VRWKV6`` backbone: (B, 3, H, W) -> tuple of (B, C, H/p, W/p) maps at ``out_indices``."""

    def __init__(self, img_size=224, patch_size=16, in_channels=3, out_indices=-1, drop_rate=0., embed_dims=192,
                 num_heads=3, depth=12, drop_path_rate=0., shift_pixel=1, shift_mode='q_shift_multihead',
                 init_mode='fancy', post_norm=False, key_norm=False, init_values=None, hidden_rate=4,
                 final_norm=True, interpolate_mode='bicubic'):
        super().__init__()
        self.embed_dims = embed_dims
        self.num_extra_tokens = 0
        self.num_layers = depth
        self.drop_path_rate = drop_path_rate
        self.patch_embed = PatchEmbed(in_channels, img_size, embed_dims, patch_size)
        self.patch_resolution = self.patch_embed.init_out_size
        num_patches = self.patch_resolution[0] * self.patch_resolution[1]
        self.interpolate_mode = interpolate_mode
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, self.embed_dims))
        self.drop_after_pos = nn.Dropout(p=drop_rate)
        out_indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        self.out_indices = [i + depth if i < 0 else i for i in out_indices]
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        self.layers = nn.ModuleList([
            Block(n_embd=embed_dims, n_head=num_heads, n_layer=depth, layer_id=i, shift_pixel=shift_pixel,
                  shift_mode=shift_mode, hidden_rate=hidden_rate, drop_path=dpr[i], init_mode=init_mode,
                  post_norm=post_norm, key_norm=key_norm, init_values=init_values)
            for i in range(depth)])
        self.final_norm = final_norm
        if final_norm:
            self.ln1 = nn.LayerNorm(self.embed_dims)

    def forward(self, x):
        x, patch_resolution = self.patch_embed(x)
        x = x + resize_pos_embed(self.pos_embed, self.patch_resolution, patch_resolution,
                                 mode=self.interpolate_mode, num_extra_tokens=self.num_extra_tokens)
        x = self.drop_after_pos(x)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x, patch_resolution)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.ln1(x)
            if i in self.out_indices:
                B, _, C = x.shape
                outs.append(x.reshape(B, *patch_resolution, C).permute(0, 3, 1, 2))
        return tuple(outs)


# ---- classifier: mmcls ImageClassifier (configs/vrwkv6) --------------------------------------------
class OfficialVRWKV6Classifier(nn.Module):
    """backbone -> neck (GAP) -> head (``fc``): (B, 3, H, W) -> (B, num_classes) logits."""

    def __init__(self, num_classes=1000, **backbone):
        super().__init__()
        self.backbone = OfficialVRWKV6(**backbone)
        self.neck = GlobalAveragePooling()
        self.head = LinearClsHead(num_classes, self.backbone.embed_dims)

    def forward(self, img):
        return self.head(self.neck(self.backbone(img)))


def official_init_weights_(model: nn.Module) -> nn.Module:
    """The classifier's ``init_cfg``: TruncNormal(layer='Linear', std=0.02, bias=0.) (mmcv: a=-2, b=2) and
    Constant(layer='LayerNorm', val=1., bias=0.); the mixing parameters keep their 'fancy' values."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, mean=0., std=0.02, a=-2., b=2.)
            if module.bias is not None:
                nn.init.constant_(module.bias, 0.)
        elif isinstance(module, nn.LayerNorm):
            nn.init.constant_(module.weight, 1.)
            nn.init.constant_(module.bias, 0.)
    return model


def build_official_v6_classifier(arch: str, num_classes: int = 1000, **overrides) -> OfficialVRWKV6Classifier:
    """The released classifier ``arch`` ('tiny', 'small', 'base') with the official init, in eval mode."""
    model = OfficialVRWKV6Classifier(num_classes=num_classes, **dict(OFFICIAL_V6_ARCHS[arch], **overrides))
    return official_init_weights_(model).eval()


# ---- weights in which every operator matters -----------------------------------------------------
MAX_LOG_DECAY = 2.5  # time_decay cap: with |tanh(.) @ time_decay_w2| < 2 below, w < 4.5 and exp(w) < 90


@torch.no_grad()
def perturb_v6_(model: nn.Module, generator: Optional[torch.Generator] = None) -> nn.Module:
    """Move the weights far from their initialisation, so that each part of the forward shows in the output.

    At init the low-rank maps (1e-4), the layer scales (1e-5), zero position embeddings and unit norms hide
    the data-dependent mixing and decay and most of the WKV branch. Here: every Linear N(0, 1 / fan_in)
    (unit gain) with biases 0.1 N; time_decay += 4 N(0, 1), capped at MAX_LOG_DECAY (decays exp(-exp(w))
    from ~1 to ~0; exp(w) < 90); time_faaaa += 0.5 N; time_maa_* and the channel mix's spatial_mix_* U(0, 1);
    time_maa_w1, time_decay_w1 unit gain; time_maa_w2 N(0, 0.3^2 / 32), time_decay_w2 N(0, 0.2^2 / 64)
    (|decay offset| <= sum_d |w2_dc|, about 1.3 < 2); norms' weights 1 + 0.1 N, biases 0.1 N; layer scales
    0.3 (1 + 0.1 N); position embedding 0.5 N.
    """
    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.copy_(randn(module.weight.shape) / math.sqrt(module.in_features))
            if module.bias is not None:
                module.bias.copy_(0.1 * randn(module.bias.shape))
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            module.weight.copy_(1 + 0.1 * randn(module.weight.shape))
            module.bias.copy_(0.1 * randn(module.bias.shape))
        elif isinstance(module, VRWKV_SpatialMix_V6):
            C = module.n_embd
            module.time_decay.add_(4 * randn(module.time_decay.shape)).clamp_(max=MAX_LOG_DECAY)
            module.time_faaaa.add_(0.5 * randn(module.time_faaaa.shape))
            for name in ('x', 'w', 'k', 'v', 'r', 'g'):
                getattr(module, f'time_maa_{name}').uniform_(0, 1, generator=generator)
            mix_rank, decay_rank = module.time_maa_w2.shape[1], module.time_decay_w2.shape[0]
            module.time_maa_w1.copy_(randn(module.time_maa_w1.shape) / math.sqrt(C))
            module.time_maa_w2.copy_(0.3 * randn(module.time_maa_w2.shape) / math.sqrt(mix_rank))
            module.time_decay_w1.copy_(randn(module.time_decay_w1.shape) / math.sqrt(C))
            module.time_decay_w2.copy_(0.2 * randn(module.time_decay_w2.shape) / math.sqrt(decay_rank))
        elif isinstance(module, VRWKV_ChannelMix):
            module.spatial_mix_k.uniform_(0, 1, generator=generator)
            module.spatial_mix_r.uniform_(0, 1, generator=generator)
    for name, param in model.named_parameters():
        leaf = name.rsplit('.', 1)[-1]
        if leaf in ('gamma1', 'gamma2'):
            param.copy_(0.3 * (1 + 0.1 * randn(param.shape)))
        elif leaf == 'pos_embed':
            param.copy_(0.5 * randn(param.shape))
    return model
