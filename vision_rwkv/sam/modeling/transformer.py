"""segment-anything's two-way transformer: prompt tokens and image tokens attend to each other.

Semantics and parameter names are those of ``segment_anything.modeling.transformer``, so its state
dicts load by name; attention runs through ``torch.nn.functional.scaled_dot_product_attention``
(softmax(QKᵀ/√d)V per head).
"""
from typing import Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the width by ``downsample_rate``.

    q (B, Nq, C), k (B, Nk, C), v (B, Nk, C) -> (B, Nq, C); the heads split C // downsample_rate.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError(f'num_heads ({num_heads}) must divide the internal width {self.internal_dim} '
                             f'(embedding_dim {embedding_dim} // downsample_rate {downsample_rate})')
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _separate_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, heads, N, D / heads)."""
        b, n, d = x.shape
        return x.reshape(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    @staticmethod
    def _recombine_heads(x: torch.Tensor) -> torch.Tensor:
        """(B, heads, N, d) -> (B, N, heads * d)."""
        b, heads, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, heads * d)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self._separate_heads(self.q_proj(q))
        k = self._separate_heads(self.k_proj(k))
        v = self._separate_heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(self._recombine_heads(out))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token→image cross-attention, token MLP, image→token cross-attention.

    Each step is residual and followed by a LayerNorm (``norm1``..``norm4``). The positional
    encodings are added to the queries and keys of every attention, except in the first block
    (``skip_first_layer_pe``) whose self-attention sees the raw tokens and replaces them (no residual).
    """

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int = 2048,
                 activation: Type[nn.Module] = nn.ReLU, attention_downsample_rate: int = 2,
                 skip_first_layer_pe: bool = False):
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,
                key_pe: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """queries (B, Nq, C) tokens, keys (B, Nk, C) image tokens and their encodings -> updated both."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        k = keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks, then a last token→image attention and LayerNorm on the tokens.

    Args:
        depth: number of ``TwoWayAttentionBlock`` layers.
        embedding_dim: token width C.
        num_heads: attention heads (must divide C // attention_downsample_rate).
        mlp_dim: hidden width of the token MLP.
        activation: MLP activation.
        attention_downsample_rate: width reduction inside the cross-attentions.
    """

    def __init__(self, depth: int = 2, embedding_dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048,
                 activation: Type[nn.Module] = nn.ReLU, attention_downsample_rate: int = 2):
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim=embedding_dim, num_heads=num_heads, mlp_dim=mlp_dim,
                                 activation=activation, attention_downsample_rate=attention_downsample_rate,
                                 skip_first_layer_pe=(i == 0))
            for i in range(depth))
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                point_embedding: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Attend between prompt tokens and image tokens.

        Args:
            image_embedding: (B, C, h, w) image (with the dense prompt already added).
            image_pe: (B, C, h, w) positional encoding of the image.
            point_embedding: (B, N, C) output and prompt tokens (also their positional encoding).

        Returns:
            tokens (B, N, C) and image tokens (B, h * w, C).
        """
        image_embedding = image_embedding.flatten(2).transpose(1, 2)
        image_pe = image_pe.flatten(2).transpose(1, 2)
        queries, keys = point_embedding, image_embedding
        for layer in self.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=image_pe)
        q = queries + point_embedding
        k = keys + image_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q=q, k=k, v=keys))
        return queries, keys
