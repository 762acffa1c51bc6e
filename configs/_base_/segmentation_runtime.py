# Runtime of the segmentation configs (mmsegmentation 1.x): iteration-based logging and atomic,
# weights_only-loadable checkpoints.
default_scope = 'mmseg'
custom_imports = dict(imports=['vision_rwkv.mmseg'], allow_failed_imports=False)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=1000, max_keep_ckpts=1, save_last=True,
                    save_best='mIoU', rule='greater', backend_args=dict(backend='local_atomic')),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'),
)
custom_hooks = [
    dict(type='PortableCheckpointHook'),
    dict(type='TrainingCurvesHook'),
]

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
