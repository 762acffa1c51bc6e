# Baseline with the recipe of vrwkv_toy_shapes.py at 18 epochs: timm's ViT at the same width, depth and
# patch size (dim 96, depth 6, 3 heads, patch 8 on 32×32 input).
_base_ = ['./vrwkv_toy_shapes_18e.py']
model = dict(model_name='vit_tiny_patch16_224',
             model_kwargs=dict(img_size=32, patch_size=8, embed_dim=96, depth=6, num_heads=3))
