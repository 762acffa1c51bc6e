# VRWKV-T on ImageNet-1K, the official recipe (8 GPUs × 128 images, 300 epochs): label smoothing
# 0.1, no drop path, no Mixup/CutMix. Official top-1: 75.1.
_base_ = [
    '../_base_/datasets/imagenet_bs128_timm_224.py',
    '../_base_/schedules/imagenet_bs1024_adamw_300e.py',
    '../_base_/default_runtime.py',
]
model = dict(
    type='TimmClassifier',
    model_name='vrwkv_tiny_patch16_224',
    num_classes=1000,
    model_kwargs=dict(drop_path_rate=0.0),
    label_smoothing=0.1,
)
default_hooks = dict(checkpoint=dict(save_best='accuracy/top1', rule='greater'))
