# VRWKV-S on ImageNet-1K, the official recipe (8 GPUs × 128 images, 300 epochs): drop path 0.3,
# label smoothing 0.1, Mixup 0.8 or CutMix 1.0 on every batch (one of the two, evenly).
# The model's defaults carry the official post-norm and layer scale 1.0. Official top-1: 80.1.
_base_ = ['./vrwkv_tiny_8xb128_in1k.py']
model = dict(
    model_name='vrwkv_small_patch16_224',
    model_kwargs=dict(drop_path_rate=0.3),
    mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5),
)
