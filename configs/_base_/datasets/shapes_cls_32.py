# The embedded shapes set (vision_rwkv.data.make_classification_set), written to data/shapes_cls on
# first use: 6 classes, 1000 training and 100 validation images per class, 32×32 JPEG, ImageFolder
# layout. Light timm augmentation (the set itself varies size, rotation, colour and texture).
data_root = 'data/shapes_cls'
num_classes = 6
generate = dict(classes=('circle', 'triangle', 'square', 'star', 'cross', 'ring'),
                train_per_class=1000, val_per_class=100, image_size=32, seed=0)

train_dataloader = dict(
    batch_size=64,
    num_workers=1,
    persistent_workers=True,
    drop_last=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='ImageFolder', data_root=data_root, split='train', generate=generate,
        transform=dict(input_size=32, is_training=True, scale=(0.9, 1.0), ratio=(0.9, 1.1), hflip=0.5,
                       interpolation='bicubic', color_jitter=0.2)),
)
val_dataloader = dict(
    batch_size=100,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type='ImageFolder', data_root=data_root, split='val', generate=generate,
        transform=dict(input_size=32, interpolation='bicubic', crop_pct=1.0)),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator
