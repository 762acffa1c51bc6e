# The main job's recipe (vrwkv_toy_shapes.py) for 18 epochs instead of 15: the schedule of the toy comparisons
# (vit_toy_shapes.py, vrwkv6_toy_shapes.py and the README's table).
_base_ = ['./vrwkv_toy_shapes.py']
max_epochs = 18
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs)
