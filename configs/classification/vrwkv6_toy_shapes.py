# VRWKV6 with the recipe of vrwkv_toy_shapes.py (inherited: depth 6, patch 8 on 32×32 input, a 4×4 token grid,
# AdamW lr 3e-3 at batch 64, label smoothing, EMA) at 18 epochs. VRWKV6 runs heads of 64 channels, so it cannot
# have the width 96 of the VRWKV and ViT toys: the nearest widths it allows are 64 and 128 (equally near);
# this config takes 64 (one head, 0.54M parameters, closest to the VRWKV toy's 0.75M and ViT's 0.69M;
# 128 would be 1.76M).
_base_ = ['./vrwkv_toy_shapes_18e.py']
model = dict(model_name='vrwkv6_tiny_patch16_224', model_kwargs=dict(embed_dim=64))
