# Official Vision-RWKV ADE20K schedule: AdamW with layer-wise lr decay, no weight decay on 1-D
# parameters (norms, biases, decays, layer scales) or the position embedding; 1500 linear warm-up
# iterations from 1e-6, then poly (power 1) to 0 at 160k iterations; validation every 16k.
# The size configs set lr and layer_decay_rate.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1.2e-4, betas=(0.9, 0.999), weight_decay=0.01),
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.95, flat_decay_mult=0.0, custom_keys={'pos_embed': dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=160000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
