"""Test-only port of the official Vision-RWKV v1 models (OpenGVLab/Vision-RWKV), the oracle that
official-format checkpoints loaded into ``vision_rwkv`` reproduce the official logits and features.

Written from the upstream code, not from ``vision_rwkv``: module and parameter names, constructor
arguments and the order of operations are the official ones, so ``state_dict()`` of these modules *is*
the official checkpoint layout. Sources (upstream paths):

* ``classification/mmcls_custom/models/backbones/vrwkv.py``: ``q_shift``, ``VRWKV_SpatialMix``,
  ``VRWKV_ChannelMix``, ``Block``, ``VRWKV`` (mmcls backbone; T/S/B are mmcls ``ImageClassifier`` s with a
  ``GlobalAveragePooling`` neck and a ``LinearClsHead`` -> keys ``backbone.*``, ``head.fc.*``);
* ``classification_internimage/models/vrwkv.py``: VRWKV-L, trained with the InternImage code base
  (``k_norm=True`` by default there, head ``Sequential(Linear(1024, 3072), Tanh, Linear(3072, C))``
  -> ``head.0.*``, ``head.2.*``); its 384 fine-tune keeps the backbone at ``img_size=192`` and
  interpolates the 12x12 position embedding to the 24x24 grid in every forward;
* ``segmentation/mmseg_custom/models/backbones/{vrwkv_adapter,adapter_modules}.py`` and
  ``detection/ops`` (``MSDeformAttn``; its CUDA op replaced by the pure PyTorch
  ``ms_deform_attn_core_pytorch``, grid_sample).

Differences from upstream, all without effect on the forward in eval mode: no mmcv/mmcls base classes,
no gradient checkpointing, ``DropPath`` from timm; ``PatchEmbed`` is mmcv's with ``conv_type='Conv2d'``,
``kernel_size=stride=patch_size`` and its default 'corner' adaptive padding written out. The Bi-WKV
operator (the official ``RUN_CUDA``) is a parameter ``wkv(w, u, k, v) -> y``; by default the loop port of
the official CUDA kernel (``official_bi_wkv.official_bi_wkv_forward``) run in the dtype of ``k``
(the official autograd function runs the kernel in float32 and casts back).
"""
import math
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from official_bi_wkv import official_bi_wkv_forward

WKV = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Backbone arguments of the released classification models (official configs; drop path is training-only).
OFFICIAL_ARCHS: Dict[str, dict] = {
    # classification/configs/vrwkv/vrwkv_tiny_8xb128_in1k.py
    'tiny': dict(img_size=224, patch_size=16, embed_dims=192),
    # classification/configs/vrwkv/vrwkv_small_8xb128_in1k.py
    'small': dict(img_size=224, patch_size=16, embed_dims=384, post_norm=True, init_values=1),
    # classification/configs/vrwkv/vrwkv_base_16xb64_in1k.py
    'base': dict(img_size=224, patch_size=16, embed_dims=768, post_norm=True, init_values=1e-5),
    # classification_internimage/configs/vrwkv_l_22kto1k_384.yaml (+ config.py defaults: K_NORM=True);
    # the 22K pre-training and the 1K fine-tune both build the backbone at IMG_SIZE 192
    'large': dict(img_size=192, patch_size=16, embed_dims=1024, depth=24, post_norm=True, init_values=1e-5,
                  key_norm=True),
}
LARGE_HIDDEN_DIMS = 3072  # MODEL.VRWKV.HIDDEN_DIMS of the InternImage config


def _default_wkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``official_bi_wkv_forward`` in k's dtype, on one CPU thread: its ~100 steps of elementwise ops on
    (B, 32, C) tensors gain nothing from intra-op threads and lose up to 10x to their synchronisation when
    the cores are shared (the ops are elementwise: the thread count does not change the result)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return official_bi_wkv_forward(w.to(k.dtype), u.to(k.dtype), k, v)
    finally:
        torch.set_num_threads(threads)


# ---- VRWKV (classification/mmcls_custom/models/backbones/vrwkv.py) ---------------------------------
def q_shift(input, shift_pixel=1, gamma=1 / 4, patch_resolution=None):
    """Official Q-Shift: channel group boundaries int(C*gamma), int(C*gamma*2), int(C*gamma*3), int(C*gamma*4)."""
    assert gamma <= 1 / 4
    B, N, C = input.shape
    input = input.transpose(1, 2).reshape(B, C, patch_resolution[0], patch_resolution[1])
    B, C, H, W = input.shape
    s = shift_pixel
    b1, b2, b3, b4 = (int(C * gamma * n) for n in (1, 2, 3, 4))
    output = torch.zeros_like(input)
    output[:, 0:b1, :, s:W] = input[:, 0:b1, :, 0:W - s]
    output[:, b1:b2, :, 0:W - s] = input[:, b1:b2, :, s:W]
    output[:, b2:b3, s:H, :] = input[:, b2:b3, 0:H - s, :]
    output[:, b3:b4, 0:H - s, :] = input[:, b3:b4, s:H, :]
    output[:, b4:, ...] = input[:, b4:, ...]
    return output.flatten(2).transpose(1, 2)


class VRWKV_SpatialMix(nn.Module):
    def __init__(self, n_embd, n_layer, layer_id, shift_mode='q_shift', channel_gamma=1 / 4, shift_pixel=1,
                 init_mode='fancy', key_norm=False, wkv: WKV = _default_wkv):
        super().__init__()
        self.layer_id, self.n_layer, self.n_embd = layer_id, n_layer, n_embd
        attn_sz = n_embd
        self._init_weights(init_mode)
        self.shift_pixel = shift_pixel
        if shift_pixel > 0:
            assert shift_mode == 'q_shift'
            self.shift_func = q_shift
            self.channel_gamma = channel_gamma
        else:  # the official module sets the registered parameters to None (absent from the state dict)
            self.spatial_mix_k = self.spatial_mix_v = self.spatial_mix_r = None
        self.key = nn.Linear(n_embd, attn_sz, bias=False)
        self.value = nn.Linear(n_embd, attn_sz, bias=False)
        self.receptance = nn.Linear(n_embd, attn_sz, bias=False)
        self.key_norm = nn.LayerNorm(n_embd) if key_norm else None
        self.output = nn.Linear(attn_sz, n_embd, bias=False)
        self.wkv = wkv

    def _init_weights(self, init_mode):
        C = self.n_embd
        if init_mode == 'fancy':
            ratio_0_to_1 = self.layer_id / (self.n_layer - 1)
            ratio_1_to_almost0 = 1.0 - self.layer_id / self.n_layer
            decay_speed = torch.ones(C)
            for h in range(C):  # Python floats, stored in float32, as upstream
                decay_speed[h] = -5 + 8 * (h / (C - 1)) ** (0.7 + 1.3 * ratio_0_to_1)
            self.spatial_decay = nn.Parameter(decay_speed)
            zigzag = torch.tensor([(i + 1) % 3 - 1 for i in range(C)]) * 0.5
            self.spatial_first = nn.Parameter(torch.ones(C) * math.log(0.3) + zigzag)
            x = torch.ones(1, 1, C)
            for i in range(C):
                x[0, 0, i] = i / C
            self.spatial_mix_k = nn.Parameter(torch.pow(x, ratio_1_to_almost0))
            self.spatial_mix_v = nn.Parameter(torch.pow(x, ratio_1_to_almost0) + 0.3 * ratio_0_to_1)
            self.spatial_mix_r = nn.Parameter(torch.pow(x, 0.5 * ratio_1_to_almost0))
        elif init_mode == 'local':
            self.spatial_decay = nn.Parameter(torch.ones(C))
            self.spatial_first = nn.Parameter(torch.ones(C))
            for name in ('spatial_mix_k', 'spatial_mix_v', 'spatial_mix_r'):
                setattr(self, name, nn.Parameter(torch.ones([1, 1, C])))
        elif init_mode == 'global':
            self.spatial_decay = nn.Parameter(torch.zeros(C))
            self.spatial_first = nn.Parameter(torch.zeros(C))
            for name in ('spatial_mix_k', 'spatial_mix_v', 'spatial_mix_r'):
                setattr(self, name, nn.Parameter(torch.ones([1, 1, C]) * 0.5))
        else:
            raise NotImplementedError

    def jit_func(self, x, patch_resolution):
        if self.shift_pixel > 0:
            xx = self.shift_func(x, self.shift_pixel, self.channel_gamma, patch_resolution)
            xk = x * self.spatial_mix_k + xx * (1 - self.spatial_mix_k)
            xv = x * self.spatial_mix_v + xx * (1 - self.spatial_mix_v)
            xr = x * self.spatial_mix_r + xx * (1 - self.spatial_mix_r)
        else:
            xk = xv = xr = x
        k = self.key(xk)
        v = self.value(xv)
        r = self.receptance(xr)
        sr = torch.sigmoid(r)
        return sr, k, v

    def forward(self, x, patch_resolution=None):
        B, T, C = x.size()
        sr, k, v = self.jit_func(x, patch_resolution)
        x = self.wkv(self.spatial_decay / T, self.spatial_first / T, k, v).to(k.dtype)  # RUN_CUDA
        if self.key_norm is not None:
            x = self.key_norm(x)
        x = sr * x
        x = self.output(x)
        return x


class VRWKV_ChannelMix(nn.Module):
    def __init__(self, n_embd, n_layer, layer_id, shift_mode='q_shift', channel_gamma=1 / 4, shift_pixel=1,
                 hidden_rate=4, init_mode='fancy', key_norm=False):
        super().__init__()
        self.layer_id, self.n_layer, self.n_embd = layer_id, n_layer, n_embd
        self._init_weights(init_mode)
        self.shift_pixel = shift_pixel
        if shift_pixel > 0:
            assert shift_mode == 'q_shift'
            self.shift_func = q_shift
            self.channel_gamma = channel_gamma
        else:
            self.spatial_mix_k = self.spatial_mix_r = None
        hidden_sz = hidden_rate * n_embd
        self.key = nn.Linear(n_embd, hidden_sz, bias=False)
        self.key_norm = nn.LayerNorm(hidden_sz) if key_norm else None
        self.receptance = nn.Linear(n_embd, n_embd, bias=False)
        self.value = nn.Linear(hidden_sz, n_embd, bias=False)

    def _init_weights(self, init_mode):
        C = self.n_embd
        if init_mode == 'fancy':
            ratio_1_to_almost0 = 1.0 - self.layer_id / self.n_layer
            x = torch.ones(1, 1, C)
            for i in range(C):
                x[0, 0, i] = i / C
            self.spatial_mix_k = nn.Parameter(torch.pow(x, ratio_1_to_almost0))
            self.spatial_mix_r = nn.Parameter(torch.pow(x, ratio_1_to_almost0))
        elif init_mode in ('local', 'global'):
            value = 1.0 if init_mode == 'local' else 0.5
            self.spatial_mix_k = nn.Parameter(torch.ones([1, 1, C]) * value)
            self.spatial_mix_r = nn.Parameter(torch.ones([1, 1, C]) * value)
        else:
            raise NotImplementedError

    def forward(self, x, patch_resolution=None):
        if self.shift_pixel > 0:
            xx = self.shift_func(x, self.shift_pixel, self.channel_gamma, patch_resolution)
            xk = x * self.spatial_mix_k + xx * (1 - self.spatial_mix_k)
            xr = x * self.spatial_mix_r + xx * (1 - self.spatial_mix_r)
        else:
            xk = xr = x
        k = self.key(xk)
        k = torch.square(torch.relu(k))
        if self.key_norm is not None:
            k = self.key_norm(k)
        kv = self.value(k)
        return torch.sigmoid(self.receptance(xr)) * kv


class Block(nn.Module):
    def __init__(self, n_embd, n_layer, layer_id, shift_mode='q_shift', channel_gamma=1 / 4, shift_pixel=1,
                 drop_path=0., hidden_rate=4, init_mode='fancy', init_values=None, post_norm=False,
                 key_norm=False, wkv: WKV = _default_wkv):
        super().__init__()
        self.layer_id = layer_id
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        if self.layer_id == 0:
            self.ln0 = nn.LayerNorm(n_embd)
        self.att = VRWKV_SpatialMix(n_embd, n_layer, layer_id, shift_mode, channel_gamma, shift_pixel, init_mode,
                                    key_norm=key_norm, wkv=wkv)
        self.ffn = VRWKV_ChannelMix(n_embd, n_layer, layer_id, shift_mode, channel_gamma, shift_pixel, hidden_rate,
                                    init_mode, key_norm=key_norm)
        self.layer_scale = init_values is not None
        self.post_norm = post_norm
        if self.layer_scale:
            self.gamma1 = nn.Parameter(init_values * torch.ones(n_embd))
            self.gamma2 = nn.Parameter(init_values * torch.ones(n_embd))

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


class PatchEmbed(nn.Module):
    """mmcv ``PatchEmbed(conv_type='Conv2d', kernel_size=stride=patch_size, padding='corner', bias=True)``."""

    def __init__(self, in_channels, input_size, embed_dims, patch_size):
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_channels, embed_dims, kernel_size=patch_size, stride=patch_size, bias=True)
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        self.init_out_size = (-(-h // patch_size), -(-w // patch_size))  # after the adaptive padding

    def forward(self, x):
        H, W = x.shape[-2:]
        p = self.patch_size
        pad_h, pad_w = -(-H // p) * p - H, -(-W // p) * p - W  # AdaptivePadding 'corner': bottom/right
        if pad_h or pad_w:
            x = F.pad(x, [0, pad_w, 0, pad_h])
        x = self.projection(x)
        out_size = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), out_size


def resize_pos_embed(pos_embed, src_shape, dst_shape, mode='bicubic', num_extra_tokens=1):
    """mmcls ``resize_pos_embed`` (also mmseg_custom's): F.interpolate, align_corners=False."""
    if src_shape[0] == dst_shape[0] and src_shape[1] == dst_shape[1]:
        return pos_embed
    _, L, C = pos_embed.shape
    src_h, src_w = src_shape
    assert L == src_h * src_w + num_extra_tokens
    extra_tokens = pos_embed[:, :num_extra_tokens]
    src_weight = pos_embed[:, num_extra_tokens:].reshape(1, src_h, src_w, C).permute(0, 3, 1, 2)
    dst_weight = F.interpolate(src_weight, size=dst_shape, align_corners=False, mode=mode)
    dst_weight = torch.flatten(dst_weight, 2).transpose(1, 2)
    return torch.cat((extra_tokens, dst_weight), dim=1)


class OfficialVRWKV(nn.Module):
    """The official ``VRWKV`` backbone: (B, 3, H, W) -> tuple of (B, C, H/p, W/p) maps at ``out_indices``."""

    def __init__(self, img_size=224, patch_size=16, in_channels=3, out_indices=-1, drop_rate=0., embed_dims=256,
                 depth=12, drop_path_rate=0., channel_gamma=1 / 4, shift_pixel=1, shift_mode='q_shift',
                 init_mode='fancy', post_norm=False, key_norm=False, init_values=None, hidden_rate=4,
                 final_norm=True, interpolate_mode='bicubic', with_cp=False, wkv: WKV = _default_wkv):
        super().__init__()
        self.embed_dims = embed_dims
        self.num_extra_tokens = 0
        self.num_layers = depth
        self.drop_path_rate = drop_path_rate
        self.patch_embed = PatchEmbed(in_channels, img_size, embed_dims, patch_size)
        self.patch_resolution = self.patch_embed.init_out_size
        num_patches = self.patch_resolution[0] * self.patch_resolution[1]
        self.interpolate_mode = interpolate_mode
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dims))
        self.drop_after_pos = nn.Dropout(p=drop_rate)
        out_indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        self.out_indices = [i + depth if i < 0 else i for i in out_indices]
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]
        self.layers = nn.ModuleList([
            Block(n_embd=embed_dims, n_layer=depth, layer_id=i, channel_gamma=channel_gamma,
                  shift_pixel=shift_pixel, shift_mode=shift_mode, hidden_rate=hidden_rate, drop_path=dpr[i],
                  init_mode=init_mode, post_norm=post_norm, key_norm=key_norm, init_values=init_values, wkv=wkv)
            for i in range(depth)])
        self.final_norm = final_norm
        if final_norm:
            self.ln1 = nn.LayerNorm(embed_dims)

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


# ---- classifiers: mmcls ImageClassifier (T/S/B) and InternImage VRWKV_Classification (L) ----------
class GlobalAveragePooling(nn.Module):
    """mmcls ``GlobalAveragePooling`` neck: AdaptiveAvgPool2d((1, 1)) of every map, flattened."""

    def __init__(self):
        super().__init__()
        self.gap = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, inputs):
        return tuple(self.gap(x).view(x.size(0), -1) for x in inputs)


class LinearClsHead(nn.Module):
    """mmcls ``LinearClsHead``: ``fc`` on the last neck output (logits; mmcls' simple_test adds a softmax)."""

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        return self.fc(x[-1])


class MLPClsHead(nn.Sequential):
    """InternImage VRWKV_Classification head for depth > 12: Linear, Tanh, Linear on the last neck output."""

    def __init__(self, num_classes, in_channels, hidden_dims):
        super().__init__(nn.Linear(in_channels, hidden_dims), nn.Tanh(), nn.Linear(hidden_dims, num_classes))

    def forward(self, x):
        return super().forward(x[-1])


class OfficialVRWKVClassifier(nn.Module):
    """backbone -> neck (GAP) -> head: (B, 3, H, W) -> (B, num_classes) logits.

    ``state_dict()`` is the released checkpoint's: ``backbone.*`` plus ``head.fc.*`` (mmcls, depth <= 12) or
    ``head.0.*`` / ``head.2.*`` (InternImage, VRWKV-L).
    """

    def __init__(self, num_classes=1000, hidden_dims=LARGE_HIDDEN_DIMS, **backbone):
        super().__init__()
        self.backbone = OfficialVRWKV(**backbone)
        self.neck = GlobalAveragePooling()
        dims, depth = self.backbone.embed_dims, self.backbone.num_layers
        self.head = (LinearClsHead(num_classes, dims) if depth <= 12
                     else MLPClsHead(num_classes, dims, hidden_dims))

    def forward(self, img):
        return self.head(self.neck(self.backbone(img)))


def build_official_classifier(arch: str, num_classes: int = 1000, wkv: WKV = _default_wkv,
                              **overrides) -> OfficialVRWKVClassifier:
    """The released classifier ``arch`` ('tiny', 'small', 'base', 'large') in eval mode."""
    return OfficialVRWKVClassifier(num_classes=num_classes, wkv=wkv, **dict(OFFICIAL_ARCHS[arch], **overrides)).eval()


def official_logits(model: OfficialVRWKVClassifier, img: torch.Tensor) -> torch.Tensor:
    """Logits in the official order: patch embed, (interpolated) pos embed, drop, blocks, final norm, GAP, head."""
    with torch.no_grad():
        return model(img)


def official_checkpoint(model: nn.Module, meta: Optional[dict] = None) -> dict:
    """The checkpoint file content the official tools write: ``{'meta': ..., 'state_dict': ...}``."""
    return dict(meta=dict(meta or {}), state_dict={k: v.detach().clone() for k, v in model.state_dict().items()})


# ---- multi-scale deformable attention (detection/ops, PyTorch path) -----------------------------
def ms_deform_attn_core_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
    N_, S_, M_, D_ = value.shape
    _, Lq_, M_, L_, P_, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in value_spatial_shapes]
    value_list = value.split([h * w for h, w in shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampling_value_list = []
    for lid_, (H_, W_) in enumerate(shapes):
        value_l_ = value_list[lid_].flatten(2).transpose(1, 2).reshape(N_ * M_, D_, H_, W_)
        sampling_grid_l_ = sampling_grids[:, :, :, lid_].transpose(1, 2).flatten(0, 1)
        sampling_value_list.append(F.grid_sample(value_l_, sampling_grid_l_, mode='bilinear',
                                                 padding_mode='zeros', align_corners=False))
    attention_weights = attention_weights.transpose(1, 2).reshape(N_ * M_, 1, Lq_, L_ * P_)
    output = (torch.stack(sampling_value_list, dim=-2).flatten(-2) * attention_weights).sum(-1)
    return output.view(N_, M_ * D_, Lq_).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4, ratio=1.0):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError('d_model must be divisible by n_heads')
        self.d_model, self.n_levels, self.n_heads = d_model, n_levels, n_heads
        self.n_points, self.ratio = n_points, ratio
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, int(d_model * ratio))
        self.output_proj = nn.Linear(int(d_model * ratio), d_model)
        self._reset_parameters()

    def _reset_parameters(self):
        nn.init.constant_(self.sampling_offsets.weight, 0.)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid_init = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid_init = (grid_init / grid_init.abs().max(-1, keepdim=True)[0]).view(
            self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid_init[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid_init.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.)
        nn.init.constant_(self.attention_weights.bias, 0.)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.)

    def forward(self, query, reference_points, input_flatten, input_spatial_shapes, input_level_start_index,
                input_padding_mask=None):
        N, Len_q, _ = query.shape
        N, Len_in, _ = input_flatten.shape
        assert (input_spatial_shapes[:, 0] * input_spatial_shapes[:, 1]).sum() == Len_in
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], float(0))
        value = value.view(N, Len_in, self.n_heads, int(self.ratio * self.d_model) // self.n_heads)
        sampling_offsets = self.sampling_offsets(query).view(N, Len_q, self.n_heads, self.n_levels, self.n_points, 2)
        attention_weights = self.attention_weights(query).view(N, Len_q, self.n_heads, self.n_levels * self.n_points)
        attention_weights = F.softmax(attention_weights, -1).view(N, Len_q, self.n_heads, self.n_levels,
                                                                  self.n_points)
        offset_normalizer = torch.stack([input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], -1)
        sampling_locations = reference_points[:, :, None, :, None, :] \
            + sampling_offsets / offset_normalizer[None, None, None, :, None, :]
        output = ms_deform_attn_core_pytorch(value, input_spatial_shapes, sampling_locations, attention_weights)
        return self.output_proj(output)


# ---- ViT-Adapter modules (segmentation/mmseg_custom/models/backbones/adapter_modules.py) ----------
def get_reference_points(spatial_shapes, device):
    reference_points_list = []
    for H_, W_ in spatial_shapes:
        ref_y, ref_x = torch.meshgrid(torch.linspace(0.5, H_ - 0.5, H_, dtype=torch.float32, device=device),
                                      torch.linspace(0.5, W_ - 0.5, W_, dtype=torch.float32, device=device),
                                      indexing='ij')
        ref_y = ref_y.reshape(-1)[None] / H_
        ref_x = ref_x.reshape(-1)[None] / W_
        reference_points_list.append(torch.stack((ref_x, ref_y), -1))
    return torch.cat(reference_points_list, 1)[:, :, None]


def deform_inputs(x):
    bs, c, h, w = x.shape
    spatial_shapes = torch.as_tensor([(h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32)],
                                     dtype=torch.long, device=x.device)
    level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
    reference_points = get_reference_points([(h // 16, w // 16)], x.device)
    deform_inputs1 = [reference_points, spatial_shapes, level_start_index]
    spatial_shapes = torch.as_tensor([(h // 16, w // 16)], dtype=torch.long, device=x.device)
    level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
    reference_points = get_reference_points([(h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32)], x.device)
    deform_inputs2 = [reference_points, spatial_shapes, level_start_index]
    return deform_inputs1, deform_inputs2


class DWConv(nn.Module):
    def __init__(self, dim=768):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x, H, W):
        B, N, C = x.shape
        n = N // 21  # levels (2H, 2W), (H, W), (H/2, W/2): 16n + 4n + n tokens
        x1 = x[:, 0:16 * n, :].transpose(1, 2).view(B, C, H * 2, W * 2).contiguous()
        x2 = x[:, 16 * n:20 * n, :].transpose(1, 2).view(B, C, H, W).contiguous()
        x3 = x[:, 20 * n:, :].transpose(1, 2).view(B, C, H // 2, W // 2).contiguous()
        x1 = self.dwconv(x1).flatten(2).transpose(1, 2)
        x2 = self.dwconv(x2).flatten(2).transpose(1, 2)
        x3 = self.dwconv(x3).flatten(2).transpose(1, 2)
        return torch.cat([x1, x2, x3], dim=1)


class ConvFFN(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.dwconv = DWConv(hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x, H, W):
        x = self.drop(self.act(self.dwconv(self.fc1(x), H, W)))
        return self.drop(self.fc2(x))


_LN6 = lambda dim: nn.LayerNorm(dim, eps=1e-6)  # noqa: E731  (partial(nn.LayerNorm, eps=1e-6))


class Extractor(nn.Module):
    def __init__(self, dim, num_heads=6, n_points=4, n_levels=1, deform_ratio=1.0, with_cffn=True,
                 cffn_ratio=0.25, drop=0., drop_path=0., norm_layer=_LN6):
        super().__init__()
        self.query_norm = norm_layer(dim)
        self.feat_norm = norm_layer(dim)
        self.attn = MSDeformAttn(d_model=dim, n_levels=n_levels, n_heads=num_heads, n_points=n_points,
                                 ratio=deform_ratio)
        self.with_cffn = with_cffn
        if with_cffn:
            self.ffn = ConvFFN(in_features=dim, hidden_features=int(dim * cffn_ratio), drop=drop)
            self.ffn_norm = norm_layer(dim)
            self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, query, reference_points, feat, spatial_shapes, level_start_index, H, W):
        attn = self.attn(self.query_norm(query), reference_points, self.feat_norm(feat), spatial_shapes,
                         level_start_index, None)
        query = query + attn
        if self.with_cffn:
            query = query + self.drop_path(self.ffn(self.ffn_norm(query), H, W))
        return query


class Injector(nn.Module):
    def __init__(self, dim, num_heads=6, n_points=4, n_levels=1, deform_ratio=1.0, norm_layer=_LN6,
                 init_values=0.):
        super().__init__()
        self.query_norm = norm_layer(dim)
        self.feat_norm = norm_layer(dim)
        self.attn = MSDeformAttn(d_model=dim, n_levels=n_levels, n_heads=num_heads, n_points=n_points,
                                 ratio=deform_ratio)
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, query, reference_points, feat, spatial_shapes, level_start_index):
        attn = self.attn(self.query_norm(query), reference_points, self.feat_norm(feat), spatial_shapes,
                         level_start_index, None)
        return query + self.gamma * attn


class InteractionBlock(nn.Module):
    def __init__(self, dim, num_heads=6, n_points=4, norm_layer=_LN6, drop=0., drop_path=0., with_cffn=True,
                 cffn_ratio=0.25, init_values=0., deform_ratio=1.0, extra_extractor=False):
        super().__init__()
        self.injector = Injector(dim=dim, n_levels=3, num_heads=num_heads, init_values=init_values,
                                 n_points=n_points, norm_layer=norm_layer, deform_ratio=deform_ratio)
        self.extractor = Extractor(dim=dim, n_levels=1, num_heads=num_heads, n_points=n_points,
                                   norm_layer=norm_layer, deform_ratio=deform_ratio, with_cffn=with_cffn,
                                   cffn_ratio=cffn_ratio, drop=drop, drop_path=drop_path)
        if extra_extractor:
            self.extra_extractors = nn.Sequential(*[
                Extractor(dim=dim, num_heads=num_heads, n_points=n_points, norm_layer=norm_layer,
                          with_cffn=with_cffn, cffn_ratio=cffn_ratio, deform_ratio=deform_ratio, drop=drop,
                          drop_path=drop_path)
                for _ in range(2)])
        else:
            self.extra_extractors = None

    def forward(self, x, c, blocks, deform_inputs1, deform_inputs2, H, W):
        x = self.injector(query=x, reference_points=deform_inputs1[0], feat=c, spatial_shapes=deform_inputs1[1],
                          level_start_index=deform_inputs1[2])
        for blk in blocks:
            x = blk(x, (H, W))
        c = self.extractor(query=c, reference_points=deform_inputs2[0], feat=x, spatial_shapes=deform_inputs2[1],
                           level_start_index=deform_inputs2[2], H=H, W=W)
        if self.extra_extractors is not None:
            for extractor in self.extra_extractors:
                c = extractor(query=c, reference_points=deform_inputs2[0], feat=x,
                              spatial_shapes=deform_inputs2[1], level_start_index=deform_inputs2[2], H=H, W=W)
        return x, c


class SpatialPriorModule(nn.Module):
    def __init__(self, inplanes=64, embed_dim=384):
        super().__init__()

        def conv_bn_relu(cin, cout, stride):
            return [nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
                    nn.SyncBatchNorm(cout), nn.ReLU(inplace=True)]

        self.stem = nn.Sequential(*conv_bn_relu(3, inplanes, 2), *conv_bn_relu(inplanes, inplanes, 1),
                                  *conv_bn_relu(inplanes, inplanes, 1),
                                  nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.conv2 = nn.Sequential(*conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, embed_dim, kernel_size=1, stride=1, padding=0, bias=True)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, kernel_size=1, stride=1, padding=0, bias=True)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, kernel_size=1, stride=1, padding=0, bias=True)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, kernel_size=1, stride=1, padding=0, bias=True)

    def forward(self, x):
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        c1, c2, c3, c4 = self.fc1(c1), self.fc2(c2), self.fc3(c3), self.fc4(c4)
        bs, dim, _, _ = c1.shape
        c2 = c2.view(bs, dim, -1).transpose(1, 2)  # 8s
        c3 = c3.view(bs, dim, -1).transpose(1, 2)  # 16s
        c4 = c4.view(bs, dim, -1).transpose(1, 2)  # 32s
        return c1, c2, c3, c4


# ---- VRWKV_Adapter (segmentation/mmseg_custom/models/backbones/vrwkv_adapter.py) ---------------
class OfficialVRWKVAdapter(OfficialVRWKV):
    """The official ``VRWKV_Adapter``: (B, 3, H, W) -> [f1, f2, f3, f4] at strides 4, 8, 16, 32.

    Its SyncBatchNorm layers run as plain batch norm outside a process group (eval mode: running stats).
    """

    def __init__(self, pretrain_size=224, conv_inplane=64, n_points=4, deform_num_heads=6, init_values_inject=0.,
                 interaction_indexes=None, with_cffn=True, cffn_ratio=0.25, deform_ratio=1.0,
                 add_rwkv_feature=True, use_extra_extractor=True, with_cp=False, **kwargs):
        super().__init__(with_cp=with_cp, **kwargs)
        self.num_block = len(self.layers)
        self.pretrain_size = (pretrain_size, pretrain_size)
        self.interaction_indexes = interaction_indexes
        self.add_rwkv_feature = add_rwkv_feature
        embed_dims = self.embed_dims
        self.ln1 = None
        self.level_embed = nn.Parameter(torch.zeros(3, embed_dims))
        self.spm = SpatialPriorModule(inplanes=conv_inplane, embed_dim=embed_dims)
        self.interactions = nn.Sequential(*[
            InteractionBlock(dim=embed_dims, num_heads=deform_num_heads, n_points=n_points,
                             init_values=init_values_inject, drop_path=self.drop_path_rate, norm_layer=_LN6,
                             with_cffn=with_cffn, cffn_ratio=cffn_ratio, deform_ratio=deform_ratio,
                             extra_extractor=(i == len(interaction_indexes) - 1) and use_extra_extractor)
            for i in range(len(interaction_indexes))])
        self.up = nn.ConvTranspose2d(embed_dims, embed_dims, 2, 2)
        self.norm1 = nn.SyncBatchNorm(embed_dims)
        self.norm2 = nn.SyncBatchNorm(embed_dims)
        self.norm3 = nn.SyncBatchNorm(embed_dims)
        self.norm4 = nn.SyncBatchNorm(embed_dims)
        nn.init.normal_(self.level_embed)

    def _add_level_embed(self, c2, c3, c4):
        return c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]

    def forward(self, x):
        deform_inputs1, deform_inputs2 = deform_inputs(x)
        c1, c2, c3, c4 = self.spm(x)
        c2, c3, c4 = self._add_level_embed(c2, c3, c4)
        c = torch.cat([c2, c3, c4], dim=1)

        x, patch_resolution = self.patch_embed(x)
        bs, n, dim = x.shape
        H, W = patch_resolution
        x = x + resize_pos_embed(self.pos_embed, self.patch_resolution, patch_resolution,
                                 mode=self.interpolate_mode, num_extra_tokens=self.num_extra_tokens)
        x = self.drop_after_pos(x)

        outs = []
        for i, layer in enumerate(self.interactions):
            indexes = self.interaction_indexes[i]
            x, c = layer(x, c, self.layers[indexes[0]:indexes[-1] + 1], deform_inputs1, deform_inputs2, H, W)
            outs.append(x.transpose(1, 2).view(bs, dim, H, W).contiguous())

        c2 = c[:, 0:c2.size(1), :]
        c3 = c[:, c2.size(1):c2.size(1) + c3.size(1), :]
        c4 = c[:, c2.size(1) + c3.size(1):, :]
        c2 = c2.transpose(1, 2).view(bs, dim, H * 2, W * 2).contiguous()
        c3 = c3.transpose(1, 2).view(bs, dim, H, W).contiguous()
        c4 = c4.transpose(1, 2).view(bs, dim, H // 2, W // 2).contiguous()
        c1 = self.up(c2) + c1

        if self.add_rwkv_feature:
            x1, x2, x3, x4 = outs
            x1 = F.interpolate(x1, scale_factor=4, mode='bilinear', align_corners=False)
            x2 = F.interpolate(x2, scale_factor=2, mode='bilinear', align_corners=False)
            x4 = F.interpolate(x4, scale_factor=0.5, mode='bilinear', align_corners=False)
            c1, c2, c3, c4 = c1 + x1, c2 + x2, c3 + x3, c4 + x4

        return [self.norm1(c1), self.norm2(c2), self.norm3(c3), self.norm4(c4)]


# ADE20K backbone arguments (segmentation/configs/ade20k/upernet_vrwkv_adapter_*_512_160k_ade20k.py)
OFFICIAL_ADAPTER_ARCHS: Dict[str, dict] = {
    'tiny': dict(img_size=224, patch_size=16, embed_dims=192, depth=12, init_values=1, conv_inplane=64, n_points=4,
                 deform_num_heads=6, cffn_ratio=0.25, deform_ratio=1.0,
                 interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]]),
    'small': dict(img_size=224, patch_size=16, embed_dims=384, depth=12, init_values=1e-5, post_norm=True,
                  conv_inplane=64, n_points=4, deform_num_heads=6, cffn_ratio=0.25, deform_ratio=1.0,
                  interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]]),
    'base': dict(img_size=224, patch_size=16, embed_dims=768, depth=12, init_values=1e-5, post_norm=True,
                 conv_inplane=64, n_points=4, deform_num_heads=12, cffn_ratio=0.25, deform_ratio=0.5,
                 interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]]),
    'large': dict(img_size=192, patch_size=16, embed_dims=1024, depth=24, init_values=1e-5, post_norm=True,
                  key_norm=True, conv_inplane=64, n_points=4, deform_num_heads=16, cffn_ratio=0.25, deform_ratio=0.5,
                  interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]]),
}


def build_official_adapter(arch: str, wkv: WKV = _default_wkv, **overrides) -> OfficialVRWKVAdapter:
    return OfficialVRWKVAdapter(wkv=wkv, **dict(OFFICIAL_ADAPTER_ARCHS[arch], **overrides)).eval()


# ---- weights in which every operator matters -----------------------------------------------------
@torch.no_grad()
def perturb_(model: nn.Module, generator: Optional[torch.Generator] = None) -> nn.Module:
    """Move the weights far from their initialisation, so that each part of the forward shows in the output.

    At init, zero position embeddings, unit norms, zero injector gates, tiny linears and layer scales of
    1e-5 hide whole operators (interpolation, norm order, the WKV branch, adapter attention). Here:
    spatial_decay += 4 N(0, 1), spatial_first += N(0, 1), layer scales and injector gates 0.3 (1 + 0.1 N),
    every Linear N(0, 1 / fan_in) with biases 0.1 N, norms' weights 1 + 0.1 N and biases 0.1 N, batch-norm
    statistics random, position embedding 0.5 N.
    """
    def randn(shape):
        return torch.randn(shape, generator=generator)

    for name, module in model.named_modules():
        if isinstance(module, VRWKV_SpatialMix):
            module.spatial_decay.add_(4 * randn(module.spatial_decay.shape))
            module.spatial_first.add_(randn(module.spatial_first.shape))
        if isinstance(module, nn.Linear):
            module.weight.copy_(randn(module.weight.shape) / math.sqrt(module.in_features))
            if module.bias is not None:
                module.bias.copy_(0.1 * randn(module.bias.shape))
        elif isinstance(module, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):
            module.weight.copy_(1 + 0.1 * randn(module.weight.shape))
            module.bias.copy_(0.1 * randn(module.bias.shape))
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(0.1 * randn(module.running_mean.shape))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    for name, param in model.named_parameters():
        leaf = name.rsplit('.', 1)[-1]
        if leaf in ('gamma1', 'gamma2', 'gamma'):
            param.copy_(0.3 * (1 + 0.1 * randn(param.shape)))
        elif leaf == 'pos_embed':
            param.copy_(0.5 * randn(param.shape))
    return model
