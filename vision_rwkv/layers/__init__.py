"""Building blocks of the Vision-RWKV models."""
from .channel_mix import ChannelMix
from .patch_embed import PatchEmbed, resample_pos_embed
from .shift import q_shift, q_shift_multihead
from .spatial_mix import SpatialMix
from .spatial_mix_v6 import SpatialMixV6

__all__ = ['ChannelMix', 'PatchEmbed', 'SpatialMix', 'SpatialMixV6', 'q_shift', 'q_shift_multihead',
           'resample_pos_embed']
