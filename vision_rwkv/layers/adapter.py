"""ViT-Adapter modules: a convolutional spatial prior and deformable-attention interactions.

The adapter turns a plain (single-scale, stride 16) backbone into a 4-level pyramid for dense
prediction. A small CNN (``SpatialPriorModule``) gives features at strides 4, 8, 16 and 32; the
stride 8/16/32 ones are flattened into one token sequence ``c``. Around each group of backbone
blocks an ``Injector`` adds ``c`` into the backbone tokens and an ``Extractor`` (with a convolutional
FFN) pulls the backbone tokens back into ``c``, both by multi-scale deformable attention.

Paper: "Vision Transformer Adapter for Dense Predictions", https://arxiv.org/abs/2205.08534
(used unchanged by Vision-RWKV for ADE20K; parameter names follow the official code).
"""
from functools import partial
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import DropPath

from .ms_deform_attn import MSDeformAttn

__all__ = ['ConvFFN', 'DWConv', 'DeformInputs', 'Extractor', 'Injector', 'InteractionBlock', 'SpatialPriorModule',
           'deform_inputs', 'pyramid_shapes']

DeformInputs = Tuple[torch.Tensor, torch.Tensor]  # (reference points (1, Q, 1, 2), spatial shapes (L, 2))
LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)


def pyramid_shapes(height: int, width: int) -> List[Tuple[int, int]]:
    """(H, W) of the stride 8, 16 and 32 levels of an image of ``height`` × ``width`` (multiples of 32)."""
    return [(height // s, width // s) for s in (8, 16, 32)]


def _reference_points(shapes: List[Tuple[int, int]], device: torch.device) -> torch.Tensor:
    """Pixel centres of every level, normalised to [0, 1] as (x, y): (1, Σ H·W, 1, 2)."""
    points = []
    for h, w in shapes:
        y, x = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32).add_(0.5).div_(h),
                              torch.arange(w, device=device, dtype=torch.float32).add_(0.5).div_(w),
                              indexing='ij')
        points.append(torch.stack([x.reshape(-1), y.reshape(-1)], -1))
    return torch.cat(points)[None, :, None]


def deform_inputs(height: int, width: int, device: torch.device) -> Tuple[DeformInputs, DeformInputs]:
    """Sampling geometry of the injectors and the extractors for an image of ``height`` × ``width``.

    Injector: queries are the stride-16 backbone tokens, features the three prior levels.
    Extractor: queries are the three prior levels, features the stride-16 backbone tokens.
    """
    levels = pyramid_shapes(height, width)
    tokens = [levels[1]]
    return ((_reference_points(tokens, device), torch.as_tensor(levels, dtype=torch.long, device=device)),
            (_reference_points(levels, device), torch.as_tensor(tokens, dtype=torch.long, device=device)))


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H·W, C)."""
    return x.flatten(2).transpose(1, 2)


class SpatialPriorModule(nn.Module):
    """ResNet-style stem and three stride-2 convs, projected to ``embed_dim``.

    (B, 3, H, W) -> c1 (B, D, H/4, W/4) and c2, c3, c4 as tokens (B, H·W/64, D), (B, H·W/256, D),
    (B, H·W/1024, D). ``norm_layer(num_features, device=..., dtype=...)`` builds the batch norms.
    """

    def __init__(self, inplanes: int = 64, embed_dim: int = 384,
                 norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)

        def conv_bn_relu(cin: int, cout: int, stride: int) -> List[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False, **dd), norm_layer(cout, **dd),
                    nn.ReLU(inplace=True)]

        self.stem = nn.Sequential(*conv_bn_relu(3, inplanes, 2), *conv_bn_relu(inplanes, inplanes, 1),
                                  *conv_bn_relu(inplanes, inplanes, 1), nn.MaxPool2d(3, 2, 1))
        self.conv2 = nn.Sequential(*conv_bn_relu(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*conv_bn_relu(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*conv_bn_relu(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, embed_dim, 1, **dd)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dim, 1, **dd)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dim, 1, **dd)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dim, 1, **dd)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        return self.fc1(c1), _to_tokens(self.fc2(c2)), _to_tokens(self.fc3(c3)), _to_tokens(self.fc4(c4))


class DWConv(nn.Module):
    """3×3 depth-wise conv applied to each level of concatenated pyramid tokens."""

    def __init__(self, dim: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, shapes: List[Tuple[int, int]]) -> torch.Tensor:
        """x: (B, N, C) tokens of the levels ``shapes`` (Σ h·w = N) -> (B, N, C)."""
        B, _, C = x.shape
        levels = []
        for part, (h, w) in zip(x.split([h * w for h, w in shapes], dim=1), shapes):
            levels.append(_to_tokens(self.dwconv(part.transpose(1, 2).reshape(B, C, h, w))))
        return torch.cat(levels, dim=1)


class ConvFFN(nn.Module):
    """Linear, depth-wise conv on each pyramid level, GELU, linear: (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.fc1 = nn.Linear(dim, hidden_dim, **dd)
        self.dwconv = DWConv(hidden_dim, **dd)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim, **dd)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, shapes: List[Tuple[int, int]]) -> torch.Tensor:
        """x: (B, N, C) tokens of the levels ``shapes`` (Σ h·w = N), concatenated."""
        x = self.drop(self.act(self.dwconv(self.fc1(x), shapes)))
        return self.drop(self.fc2(x))


class Injector(nn.Module):
    """Backbone tokens += gamma · deformable attention to the spatial prior levels."""

    def __init__(self, dim: int, num_heads: int = 6, n_points: int = 4, n_levels: int = 3,
                 deform_ratio: float = 1.0, init_values: float = 0.,
                 norm_layer: Callable[..., nn.Module] = LayerNorm6,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.query_norm = norm_layer(dim, **dd)
        self.feat_norm = norm_layer(dim, **dd)
        self.attn = MSDeformAttn(dim, n_levels, num_heads, n_points, deform_ratio, **dd)
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values), **dd))

    def forward(self, query: torch.Tensor, feat: torch.Tensor, geometry: DeformInputs) -> torch.Tensor:
        """query: (B, N, D) backbone tokens; feat: (B, S, D) prior tokens -> (B, N, D)."""
        points, shapes = geometry
        return query + self.gamma * self.attn(self.query_norm(query), points, self.feat_norm(feat), shapes)


class Extractor(nn.Module):
    """Prior tokens += deformable attention to the backbone tokens, then a residual ConvFFN."""

    def __init__(self, dim: int, num_heads: int = 6, n_points: int = 4, deform_ratio: float = 1.0,
                 with_cffn: bool = True, cffn_ratio: float = 0.25, drop: float = 0., drop_path: float = 0.,
                 norm_layer: Callable[..., nn.Module] = LayerNorm6,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.query_norm = norm_layer(dim, **dd)
        self.feat_norm = norm_layer(dim, **dd)
        self.attn = MSDeformAttn(dim, 1, num_heads, n_points, deform_ratio, **dd)
        if with_cffn:
            self.ffn = ConvFFN(dim, int(dim * cffn_ratio), drop, **dd)
            self.ffn_norm = norm_layer(dim, **dd)
            self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        else:
            self.ffn = None

    def forward(self, query: torch.Tensor, feat: torch.Tensor, geometry: DeformInputs,
                query_shapes: List[Tuple[int, int]]) -> torch.Tensor:
        """query: (B, S, D) prior tokens of ``query_shapes``; feat: (B, N, D) backbone tokens -> (B, S, D)."""
        points, shapes = geometry
        query = query + self.attn(self.query_norm(query), points, self.feat_norm(feat), shapes)
        if self.ffn is not None:
            query = query + self.drop_path(self.ffn(self.ffn_norm(query), query_shapes))
        return query


class InteractionBlock(nn.Module):
    """The injector before, and the extractor(s) after, one group of backbone blocks.

    The backbone blocks themselves stay in the backbone (their parameters keep the backbone's names);
    the caller runs them between ``inject`` and ``extract``.
    """

    def __init__(self, dim: int, num_heads: int = 6, n_points: int = 4, deform_ratio: float = 1.0,
                 init_values: float = 0., with_cffn: bool = True, cffn_ratio: float = 0.25, drop: float = 0.,
                 drop_path: float = 0., extra_extractor: bool = False,
                 norm_layer: Callable[..., nn.Module] = LayerNorm6,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.injector = Injector(dim, num_heads, n_points, 3, deform_ratio, init_values, norm_layer, **dd)
        extractors = [Extractor(dim, num_heads, n_points, deform_ratio, with_cffn, cffn_ratio, drop, drop_path,
                                norm_layer, **dd) for _ in range(3 if extra_extractor else 1)]
        self.extractor = extractors[0]
        self.extra_extractors = nn.Sequential(*extractors[1:]) if extra_extractor else None

    def inject(self, x: torch.Tensor, c: torch.Tensor, geometry: DeformInputs) -> torch.Tensor:
        return self.injector(x, c, geometry)

    def extract(self, x: torch.Tensor, c: torch.Tensor, geometry: DeformInputs,
                c_shapes: List[Tuple[int, int]]) -> torch.Tensor:
        c = self.extractor(c, x, geometry, c_shapes)
        if self.extra_extractors is not None:
            for extractor in self.extra_extractors:
                c = extractor(c, x, geometry, c_shapes)
        return c
