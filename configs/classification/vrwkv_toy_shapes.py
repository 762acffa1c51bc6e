# A small VRWKV (dim 96, depth 6, patch 8 on 32×32 input: a 4×4 token grid, 0.7M parameters) on the
# embedded shapes set. The README's main job: trains on 2 CPU cores in 4.5 to 6.5 minutes (the machine's speed
# varies) and reports validation top-1. The toy comparisons (vit_toy_shapes.py, vrwkv6_toy_shapes.py) run this
# recipe for 18 epochs.
_base_ = [
    '../_base_/datasets/shapes_cls_32.py',
    '../_base_/schedules/imagenet_bs1024_adamw_300e.py',
    '../_base_/default_runtime.py',
]
model = dict(
    type='TimmClassifier',
    model_name='vrwkv_tiny_patch16_224',
    num_classes=6,
    model_kwargs=dict(img_size=32, patch_size=8, embed_dim=96, depth=6),
    label_smoothing=0.1,
)
max_epochs = 15
# the ImageNet schedule's optimizer at lr 3e-3 (batch 64), one warm-up epoch, 15 epochs
optim_wrapper = dict(optimizer=dict(lr=3e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
auto_scale_lr = dict(base_batch_size=64)
custom_hooks = [
    dict(type='PortableCheckpointHook'),
    dict(type='ClassNumCheckHook'),
    dict(type='TrainingCurvesHook'),
    dict(type='EMAHook', momentum=0.01, update_buffers=True),
]
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(save_best='accuracy/top1', rule='greater'))
randomness = dict(seed=0)
