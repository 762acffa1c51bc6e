# Toy dense prediction on CPU with VRWKV6 blocks: the recipe of upernet_vrwkv_toy_shapes_ade20k.py (inherited:
# UperNet on a small adapter of 4 blocks in 4 interaction groups, trained from scratch on the embedded
# ADE20K-layout shapes set, 3000 iterations of 16 images, AdamW lr 2e-3, poly, BN, whole-image inference) with a
# VRWKV6-Adapter of width 64 (one head of 64 channels; VRWKV6 needs 64 channels per head, the VRWKV toy has
# width 96) and 4 deformable heads (16 channels each, as the VRWKV toy's 6 heads of 96). Measured: see the README.
_base_ = ['./upernet_vrwkv_toy_shapes_ade20k.py']
model = dict(
    backbone=dict(type='VRWKV6_Adapter', embed_dims=64, num_heads=1, deform_num_heads=4),
    decode_head=dict(in_channels=[64, 64, 64, 64]),
    auxiliary_head=dict(in_channels=64),
)
