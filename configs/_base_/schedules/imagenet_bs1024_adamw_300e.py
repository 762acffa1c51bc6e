# The official Vision-RWKV ImageNet schedule: AdamW lr 1e-3 at total batch 1024, weight decay 0.05
# (none on norm layers and biases), gradient clipping at norm 5, 20 warm-up epochs (linear from
# 1e-3 × lr) then cosine to 1e-5, 300 epochs, evaluation every epoch.
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=5.0),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=20, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=20, end=300, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
val_cfg = dict()
test_cfg = dict()
# lr is for 1024 images per step; `auto_scale_lr.enable=True` rescales it to the actual total batch.
auto_scale_lr = dict(base_batch_size=1024, enable=False)
