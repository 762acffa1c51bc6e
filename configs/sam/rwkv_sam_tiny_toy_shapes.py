# RWKV-SAM on the embedded COCO-format shapes set (written to data/shapes_coco on first use): a tiny
# encoder (4 RWKV blocks) at a 128 input, trained from scratch with box, point, correction-click and
# mask prompts; validated with one box and one centre point per instance (mIoU and boundary IoU).
_base_ = ['../_base_/default_runtime.py']
custom_imports = dict(imports=['vision_rwkv.engine', 'vision_rwkv.engine.sam'], allow_failed_imports=False)

img_size = 128
data_root = 'data/shapes_coco'
generate = dict(image_size=64, train_images=1000, val_images=100, max_shapes=4, seed=0)
model = dict(type='RWKVSamTrainer', variant='tiny', img_size=img_size, encoder=dict(depth=4),
             max_instances=4, point_prob=0.5, max_points=2, correction_rounds=1,
             focal_weight=5.0, dice_weight=1.0)  # SAM's 20:1 focal weight learns slowly from scratch

train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='CocoInstanceMasks', data_root=data_root, ann_file='annotations/instances_train.json',
                 img_dir='train', img_size=img_size, training=True, scale_range=(0.75, 1.25), generate=generate),
)
val_dataloader = dict(
    batch_size=10,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='CocoInstanceMasks', data_root=data_root, ann_file='annotations/instances_val.json',
                 img_dir='val', img_size=img_size, generate=generate),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='PromptedMaskIoU')
test_evaluator = val_evaluator

max_epochs = 12
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, eta_min=1e-5, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=3)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval=3))
custom_hooks = [dict(type='PortableCheckpointHook'), dict(type='TrainingCurvesHook')]  # not a classifier
randomness = dict(seed=0, deterministic=False)
