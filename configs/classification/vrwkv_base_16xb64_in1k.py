# VRWKV-B on ImageNet-1K, the official recipe (16 GPUs × 64 images, 300 epochs): drop path 0.5,
# label smoothing 0.1, Mixup 0.8 or CutMix 1.0 on every batch. The model's defaults carry the
# official post-norm and layer scale 1e-5. Official top-1: 82.0.
_base_ = ['./vrwkv_small_8xb128_in1k.py']
model = dict(model_name='vrwkv_base_patch16_224', model_kwargs=dict(drop_path_rate=0.5))
train_dataloader = dict(batch_size=64)
val_dataloader = dict(batch_size=64)
test_dataloader = dict(batch_size=64)
