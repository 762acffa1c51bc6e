# ImageNet-1K in ImageFolder layout (data/imagenet/{train,val}/<wnid>/*.JPEG), 128 images per GPU.
# Augmentation of the official Vision-RWKV recipe, with timm's transforms: RandomResizedCrop 224
# (bicubic), horizontal flip, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25 (per-pixel
# noise); evaluation resizes to 256 and centre-crops 224 (crop_pct 0.875), bicubic.
data_root = 'data/imagenet'
num_classes = 1000

train_dataloader = dict(
    batch_size=128,
    num_workers=8,
    persistent_workers=True,
    drop_last=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='ImageFolder', data_root=data_root, split='train',
        transform=dict(input_size=224, is_training=True, scale=(0.08, 1.0), hflip=0.5,
                       interpolation='bicubic', auto_augment='rand-m9-mstd0.5-inc1',
                       re_prob=0.25, re_mode='pixel', re_count=1)),
)
val_dataloader = dict(
    batch_size=128,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='ImageFolder', data_root=data_root, split='val',
        transform=dict(input_size=224, interpolation='bicubic', crop_pct=0.875)),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator
