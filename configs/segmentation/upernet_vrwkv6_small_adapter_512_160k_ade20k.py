# UperNet + VRWKV6-S adapter on ADE20K. Upstream has no VRWKV6 segmentation configs: this is the official
# VRWKV-S recipe (upernet_vrwkv_small_adapter_512_160k_ade20k.py, inherited) with VRWKV6 blocks.
# Carried over unchanged: UperNet + auxiliary FCN (150 classes), crop 512, 160k iterations at 8 GPUs x 2 images,
# AdamW lr 6e-5, weight decay 0.01 (none on 1-D parameters and the position embedding), layer decay 0.85 over
# the 12 blocks, 1500 linear warm-up iterations then poly, drop path 0.2, post-norm with layer scale 1e-5 (as the
# VRWKV6-S classifier), the adapter (64-channel prior stem, 6 deformable heads, deform ratio 1.0, 4 points, conv
# FFN ratio 0.25, interactions [[0, 2], [3, 5], [6, 8], [9, 11]]), img_size 224 (the pretraining grid), slide
# inference 512 / 341.
# VRWKV6's own: num_heads 6 (heads of 64 channels, as the classifier); no weight decay on its decay and bonus
# (time_decay, time_faaaa), like VRWKV's spatial_decay / spatial_first, which the 1-D rule exempts; its low-rank
# maps (time_maa_w1/w2, time_decay_w1/w2) and mixing coefficients decay like VRWKV's matrices and mixes.
# Backbone initialised from the official VRWKV6-S ImageNet-1K, 224 classification checkpoint (81.1 top-1):
#   https://huggingface.co/OpenGVLab/Vision-RWKV/resolve/main/vrwkv6_s_in1k_224.pth -> pretrained/vrwkv6_s_in1k_224.pth
# (any VRWKV6-S checkpoint of ours loads too). No mIoU measured (no ADE20K run here).
_base_ = ['./upernet_vrwkv_small_adapter_512_160k_ade20k.py']
model = dict(
    backbone=dict(
        type='VRWKV6_Adapter',
        num_heads=6,
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/vrwkv6_s_in1k_224.pth'),
    ),
)
# mmengine takes the longest key that is part of a parameter's name: 'time_decay_w' (the low-rank maps
# time_decay_w1/w2, decayed) before 'time_decay'
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={
    'time_decay': dict(decay_mult=0.0), 'time_decay_w': dict(decay_mult=1.0), 'time_faaaa': dict(decay_mult=0.0)}))
