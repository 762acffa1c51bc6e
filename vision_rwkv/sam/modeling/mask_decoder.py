"""RWKV-SAM's mask decoder: segment-anything's ``MaskDecoder`` plus multiscale feature fusion.

The SAM part keeps segment-anything's parameter names (``transformer``, ``iou_token``,
``mask_tokens``, ``output_upscaling``, ``output_hypernetworks_mlps``, ``iou_prediction_head``), so
a SAM mask decoder's weights load into it by name (``strict=False``: the fusion layers are new).

Fusion (RWKV-SAM): after the 4× upscaling of the transformer's image tokens (C/8 channels at
4h × 4w), the encoder's stride-4 and stride-8 maps are projected to C/8 channels at the same
resolution, the three maps are concatenated, mixed by two 3×3 convolutions and the result is
added to the upscaled embedding before the hypernetwork product with the mask tokens:

    hr_feat_proj  (stride 4): conv3×3 stride4_chans→C/4, LayerNorm2d, act, conv3×3 C/4→C/8
    mr_feat_proj  (stride 8): convT2×2 s2 stride8_chans→C/4, LayerNorm2d, act, conv3×3 C/4→C/8
    mix_feat_proj: conv3×3 3C/8→C/4, LayerNorm2d, act, conv3×3 C/4→C/8 on
                   cat([upscaled, stride-8 proj, stride-4 proj]), added to upscaled

The names and the concatenation order are those of the upstream RWKV-SAM decoder
(``SAMRWKVHRMaskDecoderMLPMerge``: hr = stride 4, mr = stride 8). The two projections depend on
the image only, so they run once per image, before the per-prompt expansion; so does the part of
``mix_feat_proj``'s first convolution that reads them (``image_fusion``; exported encoders compute it,
``vision_rwkv.deploy.sam_onnx``).

``fusion`` chooses among three decoders:

    'mix'   the upstream fusion above (the default; upstream weights load into it).
    'add'   the mixing runs on the two image maps alone, once per image, and its (C/8, 4h, 4w) output is
            added to every prompt's upscaled embedding: mix_feat_proj reads cat([stride-8 proj, stride-4
            proj]) (2C/8 channels). Per prompt the fusion costs one addition instead of two 3×3
            convolutions, a LayerNorm2d and an activation at stride 4.
    'none'  segment-anything's single-scale ``MaskDecoder`` (no fusion layers; the image features may be a
            plain embedding tensor).

``fuse_image(features)`` computes the image-only part once and keeps it on the features (``features.fusion``),
so that every later decoder call on them (a training step's correction rounds, a predictor's clicks) skips it.
"""
from typing import Any, List, Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import LayerNorm2d
from .image_encoder import ImageFeatures
from .transformer import TwoWayTransformer

FUSIONS = ('mix', 'add', 'none')


class _GatherRows(torch.autograd.Function):
    """``x.index_select(0, index)`` whose backward adds contiguous rows (``index_select``'s own backward takes an
    element-wise scatter path, 3-5× slower, when the incoming gradient is channels-last, as a convolution's is)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        index, = ctx.saved_tensors
        return grad.new_zeros((ctx.rows,) + grad.shape[1:]).index_add_(0, index, grad.contiguous()), None


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (B,) of ``x`` (F, ...) -> (B, ...)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _GatherRows.apply(x, index)
    return x.index_select(0, index)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (segment-anything's ``MLP``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 sigmoid_output: bool = False):
        super().__init__()
        self.num_layers = num_layers
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip(dims_in, dims_out))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class MultiScaleMaskDecoder(nn.Module):
    """Mask logits and IoU predictions from image features and prompt embeddings.

    Args:
        transformer_dim: channels C of the image embedding and of the prompt tokens.
        transformer: the two-way transformer; None builds SAM's (depth 2, 8 heads, MLP 2048).
        num_multimask_outputs: masks returned when ``multimask_output`` is True (one more token
            is kept for the single-mask output).
        activation: activation of the upscaling and fusion convolutions.
        iou_head_depth, iou_head_hidden_dim: the IoU prediction MLP.
        stride4_chans, stride8_chans: channels of the encoder's stride-4 and stride-8 maps.
        fusion: 'mix', 'add' or 'none' (see the module docstring).
    """

    def __init__(self, transformer_dim: int = 256, transformer: Optional[nn.Module] = None,
                 num_multimask_outputs: int = 3, activation: Type[nn.Module] = nn.GELU, iou_head_depth: int = 3,
                 iou_head_hidden_dim: int = 256, stride4_chans: int = 64, stride8_chans: int = 128,
                 fusion: str = 'mix'):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f'fusion must be one of {FUSIONS}, got {fusion!r}')
        if transformer is None:
            transformer = TwoWayTransformer(depth=2, embedding_dim=transformer_dim, num_heads=8, mlp_dim=2048)
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.stride4_chans = stride4_chans
        self.stride8_chans = stride8_chans
        self.fusion = fusion

        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)

        mid, out = transformer_dim // 4, transformer_dim // 8
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, mid, kernel_size=2, stride=2),
            LayerNorm2d(mid),
            activation(),
            nn.ConvTranspose2d(mid, out, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, out, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

        if fusion != 'none':
            self._build_fusion(activation, stride4_chans, stride8_chans)

    def _build_fusion(self, activation: Type[nn.Module], stride4_chans: int, stride8_chans: int) -> None:
        mid, out = self.transformer_dim // 4, self.transformer_dim // 8
        self.hr_feat_proj = nn.Sequential(
            nn.Conv2d(stride4_chans, mid, kernel_size=3, padding=1),
            LayerNorm2d(mid),
            activation(),
            nn.Conv2d(mid, out, kernel_size=3, padding=1),
        )
        self.mr_feat_proj = nn.Sequential(
            nn.ConvTranspose2d(stride8_chans, mid, kernel_size=2, stride=2),
            LayerNorm2d(mid),
            activation(),
            nn.Conv2d(mid, out, kernel_size=3, padding=1),
        )
        mixed_maps = 3 if self.fusion == 'mix' else 2  # 'add' mixes the two image maps only
        self.mix_feat_proj = nn.Sequential(
            nn.Conv2d(mixed_maps * out, mid, kernel_size=3, padding=1),
            LayerNorm2d(mid),
            activation(),
            nn.Conv2d(mid, out, kernel_size=3, padding=1),
        )

    def forward(self, image_embeddings: Any, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                dense_prompt_embeddings: torch.Tensor, multimask_output: bool,
                image_index: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Predict masks for B prompts (segment-anything's ``MaskDecoder.forward`` call).

        Args:
            image_embeddings: features with attributes ``embedding`` (F, C, h, w), ``stride4``
                (F, stride4_chans, 4h, 4w) and ``stride8`` (F, stride8_chans, 2h, 2w), e.g. the image
                encoder's ``ImageFeatures`` (with ``fusion`` if ``fuse_image`` made them; a plain (F, C, h, w)
                embedding for ``fusion='none'``). F = 1 (one image, shared by all prompts, as in
                segment-anything) or F = B (one image per prompt).
            image_pe: (1 or B, C, h, w) positional encoding (``PromptEncoder.get_dense_pe()``).
            sparse_prompt_embeddings: (B, K, C).
            dense_prompt_embeddings: (B or 1, C, h, w).
            multimask_output: return the ``num_multimask_outputs`` masks (tokens 1..) instead of the
                single-mask token 0.
            image_index: optional (B,) long tensor: prompt b belongs to image ``image_index[b]`` of
                the F images (prompts of several images decoded in one call; the image-only fusion
                projections still run once per image).

        Returns:
            mask logits (B, M, 4h, 4w) and predicted IoU (B, M), M = num_multimask_outputs or 1.
        """
        masks, iou_pred = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings,
                                             dense_prompt_embeddings, image_index)
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, selected], iou_pred[:, selected]

    def _unpack_features(self, features: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The (F, C, h, w) embedding and the image part of the fusion (``features.fusion`` if ``fuse_image``
        computed it, else computed here; None for ``fusion='none'``)."""
        if self.fusion == 'none':
            embedding = features.embedding if isinstance(features, ImageFeatures) else features
            self._check_embedding(embedding)
            return embedding, None
        cached = getattr(features, 'fusion', None)
        if cached is not None:
            self._check_embedding(features.embedding)
            return features.embedding, cached
        embedding, stride4, stride8 = self._multiscale_maps(features)
        return embedding, self.image_fusion(stride4, stride8)

    def _check_embedding(self, embedding: torch.Tensor) -> None:
        if not isinstance(embedding, torch.Tensor) or embedding.dim() != 4 or embedding.shape[1] != self.transformer_dim:
            shape = tuple(embedding.shape) if isinstance(embedding, torch.Tensor) else type(embedding).__name__
            raise ValueError(f'the image embedding must be (F, {self.transformer_dim}, h, w), got {shape}')

    def _multiscale_maps(self, features: Any) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        missing = [name for name in ('embedding', 'stride4', 'stride8') if not hasattr(features, name)]
        if missing and isinstance(features, torch.Tensor):
            raise TypeError('MultiScaleMaskDecoder needs the multiscale image features (the image encoder\'s '
                            'ImageFeatures, or an object with .embedding, .stride4 and .stride8), not a plain tensor '
                            f'of shape {tuple(features.shape)}')
        if missing:
            raise TypeError(f'image features of type {type(features).__name__} lack {missing}; expected '
                            '.embedding, .stride4 and .stride8 (the image encoder\'s ImageFeatures)')
        embedding, stride4, stride8 = features.embedding, features.stride4, features.stride8
        if stride4 is None or stride8 is None:
            raise TypeError(f'the image features carry no stride-4 / stride-8 maps, which fusion={self.fusion!r} '
                            'reads (a ViTSamImageEncoder built with pyramid=False?)')
        self._check_embedding(embedding)
        n, _, h, w = embedding.shape
        expected = {'stride4': (stride4, (n, self.stride4_chans, 4 * h, 4 * w)),
                    'stride8': (stride8, (n, self.stride8_chans, 2 * h, 2 * w))}
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f'features.{name} must be {shape} for an embedding of shape '
                                 f'{tuple(embedding.shape)}, got {tuple(tensor.shape)}')
        return embedding, stride4, stride8

    def fuse_image(self, features: ImageFeatures) -> ImageFeatures:
        """The same features with the image part of the fusion computed once (``.fusion``): decoder calls on the
        result skip it. Recompute after the decoder's weights change (it is a function of them)."""
        if self.fusion == 'none':
            return features
        embedding, stride4, stride8 = self._multiscale_maps(features)
        return ImageFeatures(embedding, stride4, stride8, fusion=self.image_fusion(stride4, stride8))

    @staticmethod
    def _per_prompt(x: torch.Tensor, num_prompts: int, name: str,
                    image_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(F, ...) -> (B, ...): rows ``image_index`` if given, else one image shared by every
        prompt (F = 1) or one per prompt (F = B)."""
        if image_index is not None:
            if image_index.shape != (num_prompts,):
                raise ValueError(f'image_index must have shape ({num_prompts},), got {tuple(image_index.shape)}')
            if len(image_index) and (int(image_index.min()) < 0 or int(image_index.max()) >= x.shape[0]):
                raise ValueError(f'image_index values must lie in [0, {x.shape[0]}) for {name} of batch '
                                 f'{x.shape[0]}, got {image_index.min().item()}..{image_index.max().item()}')
            return gather_rows(x, image_index)
        if x.shape[0] == num_prompts:
            return x
        if x.shape[0] == 1:
            return x.expand(num_prompts, *x.shape[1:])
        raise ValueError(f'{name} has batch {x.shape[0]}; expected 1 (shared by all prompts) '
                         f'or {num_prompts} (one per prompt)')

    def image_fusion(self, stride4: torch.Tensor, stride8: torch.Tensor) -> torch.Tensor:
        """The image-only part of the fusion, from stride4 (F, stride4_chans, 4h, 4w) and stride8
        (F, stride8_chans, 2h, 2w): (F, C/4, 4h, 4w) for 'mix', (F, C/8, 4h, 4w) for 'add'.

        'mix': ``mix_feat_proj``'s first 3×3 convolution is linear in its input channels, so it splits into the part
        that reads ``mr_feat_proj(stride8)`` and ``hr_feat_proj(stride4)`` (this, bias included), which depends on
        the image only and runs once per image, and the part that reads the per-prompt upscaled embedding
        (``_fuse``). 'add': the whole ``mix_feat_proj`` on the two maps.
        """
        image_maps = torch.cat([self.mr_feat_proj(stride8), self.hr_feat_proj(stride4)], dim=1)
        if self.fusion == 'add':
            return self.mix_feat_proj(image_maps)
        first = self.mix_feat_proj[0]
        return F.conv2d(image_maps, first.weight[:, self.transformer_dim // 8:], first.bias, padding=first.padding)

    def _fuse(self, upscaled: torch.Tensor, image_fusion: torch.Tensor) -> torch.Tensor:
        """The fusion term added to the (B, C/8, 4h, 4w) upscaled embedding, given the image part
        (``image_fusion``, expanded to B). 'mix': ``mix_feat_proj(cat([upscaled, mr_feat_proj(stride8),
        hr_feat_proj(stride4)]))``; 'add': the image part itself."""
        if self.fusion == 'add':
            return image_fusion
        first = self.mix_feat_proj[0]
        prompt_part = F.conv2d(upscaled, first.weight[:, :upscaled.shape[1]], None, padding=first.padding)
        return self.mix_feat_proj[1:](prompt_part + image_fusion)

    def predict_masks(self, image_embeddings: Any, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                      dense_prompt_embeddings: torch.Tensor, image_index: Optional[torch.Tensor] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits of all ``num_mask_tokens`` masks (B, T, 4h, 4w) and their IoU (B, T). See ``forward``."""
        embedding, image_fusion = self._unpack_features(image_embeddings)
        return self.predict_masks_fused(embedding, image_fusion, image_pe, sparse_prompt_embeddings,
                                        dense_prompt_embeddings, image_index)

    def predict_masks_fused(self, embedding: torch.Tensor, image_fusion: Optional[torch.Tensor],
                            image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                            dense_prompt_embeddings: torch.Tensor, image_index: Optional[torch.Tensor] = None
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``predict_masks`` from the embedding (F, C, h, w) and the image's ``image_fusion`` (see ``image_fusion``;
        None for ``fusion='none'``)."""
        num_prompts = sparse_prompt_embeddings.shape[0]

        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(num_prompts, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)

        src = self._per_prompt(embedding, num_prompts, 'features.embedding', image_index) + dense_prompt_embeddings
        pos_src = self._per_prompt(image_pe, num_prompts, 'image_pe')
        b, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1:1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        if self.fusion != 'none':
            image_fusion = self._per_prompt(image_fusion, num_prompts, 'the fused stride-4/8 maps', image_index)
            upscaled = upscaled + self._fuse(upscaled, image_fusion)

        hyper_in_list: List[torch.Tensor] = [mlp(mask_tokens_out[:, i, :])
                                             for i, mlp in enumerate(self.output_hypernetworks_mlps)]
        hyper_in = torch.stack(hyper_in_list, dim=1)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred
