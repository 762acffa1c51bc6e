# The embedded segmentation set (vision_rwkv.data.make_segmentation_set) in ADE20K's layout, written
# to data/shapes_ade on first use and read by mmseg's own ADE20KDataset: 64×64 scenes of one
# background texture (sky / wall / floor) and 1-3 shapes (ball / box / signboard / flag / plate), the
# classes named after ADE20K categories so that labels are real ADE20K ids; 1000 training and 100
# validation images; region boundaries are unlabelled (0, ignored through reduce_zero_label).
dataset_type = 'ADE20KDataset'
data_root = 'data/shapes_ade'
classes = ('sky', 'wall', 'floor', 'ball', 'box', 'signboard', 'flag', 'plate')
num_classes = len(classes)
crop_size = (64, 64)
generate = dict(image_size=64, train_images=1000, val_images=100, max_shapes=3, seed=0)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadCheckedAnnotations', num_classes=num_classes),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.8, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadCheckedAnnotations', num_classes=num_classes),
    dict(type='PackSegInputs'),
]

train_dataloader = dict(
    batch_size=16,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type='EmbeddedDataset',
        generate=generate,
        dataset=dict(type=dataset_type, data_root=data_root, metainfo=dict(classes=classes),
                     data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
                     pipeline=train_pipeline)),
)
val_dataloader = dict(
    batch_size=10,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='EmbeddedDataset',
        generate=generate,
        dataset=dict(type=dataset_type, data_root=data_root, metainfo=dict(classes=classes),
                     data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
                     pipeline=test_pipeline)),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
