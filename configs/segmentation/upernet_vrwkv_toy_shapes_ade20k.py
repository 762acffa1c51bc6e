# Toy dense prediction on CPU: UperNet on a small VRWKV-Adapter (width 96, 4 blocks in 4 interaction
# groups), trained from scratch on the embedded ADE20K-layout shapes set (64×64, 8 classes, written
# on first use): 3000 iterations of 16 images, AdamW lr 2e-3, poly. Same code path as the ADE20K
# configs; BN instead of SyncBN, whole-image inference. Measured: see the README.
_base_ = [
    '../_base_/models/upernet_vrwkv_adapter.py',
    '../_base_/datasets/shapes_ade20k_64.py',
    '../_base_/schedules/adamw_layer_decay_160k.py',
    '../_base_/segmentation_runtime.py',
]
norm_cfg = dict(type='BN', requires_grad=True)
crop_size = (64, 64)
max_iters = 3000
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        img_size=64,
        embed_dims=96,
        depth=4,
        conv_inplane=32,
        deform_num_heads=6,
        interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]],
        norm_cfg=norm_cfg,
    ),
    decode_head=dict(in_channels=[96, 96, 96, 96], channels=64, num_classes=8, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=96, channels=48, num_classes=8, norm_cfg=norm_cfg),
    test_cfg=dict(_delete_=True, mode='whole'),
)
optim_wrapper = dict(optimizer=dict(lr=2e-3, weight_decay=0.01), paramwise_cfg=dict(layer_decay_rate=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=100),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=100, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=1000)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=1000))
randomness = dict(seed=0)
