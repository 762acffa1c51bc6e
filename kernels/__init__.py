"""Bidirectional WKV operators of Vision-RWKV (importable as ``vision_rwkv.kernels``).

``bi_wkv`` runs Triton kernels on CUDA tensors and a chunked PyTorch scan on CPU tensors, over a
token sequence or an image grid read row-major, column-major or crosswise (``order``);
``bi_wkv_2d`` decays by the Manhattan distance on the grid (Triton on CUDA, PyTorch otherwise). The ``*_reference``
functions are the float64 O(T^2) definitions the tests compare against.

Each call runs one ``torch.library`` operator, ``vision_rwkv::bi_wkv_forward`` or
``vision_rwkv::bi_wkv_2d_forward`` (fake kernel and autograd registered; the gradients run
``vision_rwkv::bi_wkv_backward`` / ``bi_wkv_2d_backward``), so ``torch.compile`` traces models without
graph breaks and ``torch.export`` records one node per call.

``bi_wkv6`` is VRWKV6's bidirectional RWKV-6 WKV (matrix state per head of 64 channels, data-dependent decay):
one operator ``vision_rwkv::bi_wkv6_forward`` per call (backward ``bi_wkv6_backward``), Triton on CUDA
tensors, a chunked PyTorch path otherwise.
"""
from .bi_wkv import bi_wkv
from .bi_wkv_2d import bi_wkv_2d
from .reference import bi_wkv6_reference, bi_wkv_2d_reference, bi_wkv_reference, bi_wkv_scan_reference
from .wkv6 import bi_wkv6

__all__ = ['bi_wkv', 'bi_wkv6', 'bi_wkv6_reference', 'bi_wkv_2d', 'bi_wkv_2d_reference', 'bi_wkv_reference',
           'bi_wkv_scan_reference']
