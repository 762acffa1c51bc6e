# UperNet + VRWKV-L adapter on ADE20K, the official recipe: crop 512, 160k iterations at
# 8 GPUs x 2 images, AdamW lr 6e-5, layer decay 0.9, drop path 0.4, slide inference 512/341.
# Backbone initialised from the official ImageNet-22K, 192 classification checkpoint:
#   https://huggingface.co/OpenGVLab/Vision-RWKV/resolve/main/vrwkv_l_in22k_192.pth -> pretrained/vrwkv_l_in22k_192.pth
# (any VRWKV-L checkpoint of ours loads too). Official mIoU (single scale): 53.5.
_base_ = [
    '../_base_/models/upernet_vrwkv_adapter.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/adamw_layer_decay_160k.py',
    '../_base_/segmentation_runtime.py',
]
model = dict(
    backbone=dict(
        img_size=192,  # the ImageNet-22K pretraining grid (official config)
        embed_dims=1024,
        depth=24,
        init_values=1e-5,
        post_norm=True,
        key_norm=True,
        drop_path_rate=0.4,
        deform_num_heads=16,
        deform_ratio=0.5,
        interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]],
        init_cfg=dict(type='Pretrained', checkpoint='pretrained/vrwkv_l_in22k_192.pth'),
    ),
    decode_head=dict(in_channels=[1024, 1024, 1024, 1024]),
    auxiliary_head=dict(in_channels=1024),
)
optim_wrapper = dict(optimizer=dict(lr=6e-5), paramwise_cfg=dict(layer_decay_rate=0.9))
train_dataloader = dict(batch_size=2)  # per GPU, 8 GPUs
default_hooks = dict(checkpoint=dict(interval=1000))
