# RWKV-SAM small at SAM's 1024 input, trained on SA-1B (per-image JSON, RLE masks) and evaluated on COCO
# val2017 with one box and one centre point per instance. A starting recipe for GPUs (bf16 autocast through
# mmengine's AmpOptimWrapper), not run on this project's CPU machine: no figure is claimed for it.
#
# Data:  data/sa1b/sa_<id>.jpg + sa_<id>.json (the extracted SA-1B tar files, flat)
#        data/coco/val2017/*.jpg + data/coco/annotations/instances_val2017.json
# Distillation from a SAM teacher (optional, as the paper's first stage): set
#        model = dict(teacher=dict(model_type='vit_h', checkpoint='checkpoints/sam_vit_h_4b8939.pth'))
# Run:   torchrun --nproc_per_node=8 tools/train.py configs/sam/rwkv_sam_small_sa1b_1024.py --launcher pytorch
_base_ = ['../_base_/default_runtime.py']
custom_imports = dict(imports=['vision_rwkv.engine', 'vision_rwkv.engine.sam'], allow_failed_imports=False)

img_size = 1024
model = dict(type='RWKVSamTrainer', variant='small', img_size=img_size, max_instances=16, point_prob=0.5,
             max_points=5, correction_rounds=2, focal_weight=20.0, dice_weight=1.0, iou_weight=1.0,
             teacher=None, distill_weight=1.0)

train_dataloader = dict(
    batch_size=4,  # per GPU
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='SA1BMasks', data_root='data/sa1b', img_size=img_size, training=True,
                 scale_range=(0.1, 2.0), max_masks=64),
)
val_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type='CocoInstanceMasks', data_root='data/coco', ann_file='annotations/instances_val2017.json',
                 img_dir='val2017', img_size=img_size),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='PromptedMaskIoU')
test_evaluator = val_evaluator

max_iters = 90000
optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16',
                     optimizer=dict(type='AdamW', lr=8e-4, betas=(0.9, 0.999), weight_decay=0.1),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters, milestones=[60000, 80000], gamma=0.1),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=10000)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(logger=dict(interval=50), checkpoint=dict(by_epoch=False, interval=5000, max_keep_ckpts=3))
custom_hooks = [dict(type='PortableCheckpointHook'), dict(type='TrainingCurvesHook')]
log_processor = dict(by_epoch=False)
auto_scale_lr = dict(enable=False, base_batch_size=32)
