# UperNet + VRWKV-T adapter on ADE20K, the official recipe: crop 512, 160k iterations at
# 8 GPUs x 2 images, AdamW lr 1.2e-4, layer decay 0.95, drop path 0.1, slide inference 512/341.
# Backbone initialised from the official ImageNet-1K, 224 classification checkpoint:
#   https://huggingface.co/OpenGVLab/Vision-RWKV/resolve/main/vrwkv_t_in1k_224.pth -> pretrained/vrwkv_t_in1k_224.pth
# (any VRWKV-T checkpoint of ours loads too). Official mIoU (single scale): 43.3.
_base_ = [
    '../_base_/models/upernet_vrwkv_adapter.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/adamw_layer_decay_160k.py',
    '../_base_/segmentation_runtime.py',
]
model = dict(
    backbone=dict(
        embed_dims=192,
        depth=12,
        init_values=1.0,
        drop_path_rate=0.1,
        deform_num_heads=6,
        deform_ratio=1.0,
        interaction_indexes=[[0, 2], [3, 5], [6, 8], [9, 11]],
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/vrwkv_t_in1k_224.pth'),
    ),
    decode_head=dict(in_channels=[192, 192, 192, 192]),
    auxiliary_head=dict(in_channels=192),
)
optim_wrapper = dict(optimizer=dict(lr=1.2e-4), paramwise_cfg=dict(layer_decay_rate=0.95))
train_dataloader = dict(batch_size=2)  # per GPU, 8 GPUs
default_hooks = dict(checkpoint=dict(interval=1000))
