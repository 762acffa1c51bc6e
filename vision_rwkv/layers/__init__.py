"""Building blocks of the Vision-RWKV models."""
from .channel_mix import ChannelMix
from .patch_embed import PatchEmbed, resample_pos_embed
from .shift import q_shift
from .spatial_mix import SpatialMix

__all__ = ['ChannelMix', 'PatchEmbed', 'SpatialMix', 'q_shift', 'resample_pos_embed']
