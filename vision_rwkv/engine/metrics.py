"""Classification metrics for mmengine evaluators."""
from __future__ import annotations

from typing import Sequence

import torch
from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS


@METRICS.register_module()
class Accuracy(BaseMetric):
    """Top-k accuracy in percent, reported as ``accuracy/top{k}`` (mmpretrain's names).

    Expects the model's ``'predict'`` outputs: ``dict(pred_score=(num_classes,), gt_label=int)``.
    A ``k`` larger than the number of classes is reported as 100 (every label is within the top k).
    """
    default_prefix = 'accuracy'

    def __init__(self, topk: Sequence[int] = (1, 5), collect_device: str = 'cpu', prefix: str | None = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = tuple(topk)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            scores = sample['pred_score'].float().cpu()
            rank = int((scores > scores[sample['gt_label']]).sum())
            self.results.append(rank)

    def compute_metrics(self, results: list) -> dict:
        ranks = torch.tensor(results)
        return {f'top{k}': float((ranks < k).float().mean() * 100) for k in self.topk}
