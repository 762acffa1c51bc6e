"""Hooks of the training tools: a class-count check before any step and the curves PNG."""
from __future__ import annotations

import io
import os.path as osp

from mmengine.dist import master_only
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop

from .checkpoint import atomic_write
from ..errors import ConfigError


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


@HOOKS.register_module()
class ClassNumCheckHook(Hook):
    """Fails before the first step when the model's ``num_classes`` differs from the data set's classes."""

    def _check(self, runner, dataloader, split: str) -> None:
        model = _unwrap(runner.model)
        classes = getattr(dataloader.dataset, 'metainfo', {}).get('classes')
        expected = getattr(model, 'num_classes', None)
        if classes is None or expected is None:
            return
        if len(classes) != expected:
            root = getattr(dataloader.dataset, 'root', '?')
            raise ConfigError(f'the model has num_classes={expected} but the {split} set {root} has '
                              f'{len(classes)} classes {tuple(classes)[:10]}; set model.num_classes={len(classes)}')

    def before_train(self, runner) -> None:
        self._check(runner, runner.train_dataloader, 'train')

    def before_val(self, runner) -> None:
        self._check(runner, runner.val_dataloader, 'val')

    def before_test(self, runner) -> None:
        self._check(runner, runner.test_dataloader, 'test')


@HOOKS.register_module()
class TrainingCurvesHook(Hook):
    """Plots the training loss, learning rate and validation metrics to ``work_dir/curves.png``.

    Reads the run's log history from the message hub (which checkpoints carry, so a resumed run
    plots the whole run), after every validation and at the end of training.

    Args:
        filename: PNG name inside the work dir.
        smooth: window (iterations) of the moving average drawn over the raw loss.
    """
    priority = 'VERY_LOW'

    def __init__(self, filename: str = 'curves.png', smooth: int = 20):
        self.filename = filename
        self.smooth = smooth

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.plot(runner)

    def after_train(self, runner) -> None:
        self.plot(runner)

    @master_only
    def plot(self, runner) -> None:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        import numpy as np

        scalars = runner.message_hub.log_scalars
        loss_keys = [k for k in scalars if k.startswith('train/') and 'loss' in k]
        val_keys = [k for k in scalars if k.startswith('val/') and k not in ('val/time', 'val/data_time')]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for key in loss_keys:
            values = scalars[key].data[0]
            axes[0].plot(np.arange(1, len(values) + 1), values, alpha=0.3, label=f'{key[6:]} (raw)')
            if len(values) >= self.smooth:
                kernel = np.ones(self.smooth) / self.smooth
                smooth = np.convolve(values, kernel, mode='valid')
                axes[0].plot(np.arange(self.smooth, len(values) + 1), smooth,
                             label=f'{key[6:]} (mean of {self.smooth})')
        axes[0].set(title='training loss', xlabel='iteration')
        if 'train/lr' in scalars:
            lr = scalars['train/lr'].data[0]
            axes[1].plot(np.arange(1, len(lr) + 1), lr)
        axes[1].set(title='learning rate', xlabel='iteration')
        interval = getattr(runner.train_loop, 'val_interval', 1)
        unit = 'iteration' if isinstance(runner.train_loop, IterBasedTrainLoop) else 'epoch'
        for key in val_keys:
            values = scalars[key].data[0]
            axes[2].plot(interval * np.arange(1, len(values) + 1), values, marker='o', label=key[4:])
        axes[2].set(title='validation', xlabel=unit)
        for ax in axes:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format='png', dpi=100)
        plt.close(fig)
        atomic_write(buf.getvalue(), osp.join(runner.work_dir, self.filename))
