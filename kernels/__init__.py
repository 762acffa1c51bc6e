"""Bidirectional WKV operators of Vision-RWKV (importable as ``vision_rwkv.kernels``).

``bi_wkv`` runs Triton kernels on CUDA tensors and a chunked PyTorch scan on CPU tensors, over a
token sequence or an image grid read row-major, column-major or crosswise (``order``);
``bi_wkv_2d`` decays by the Manhattan distance on the grid (Triton on CUDA, PyTorch otherwise). The ``*_reference``
functions are the float64 O(T^2) definitions the tests compare against.
"""
from .bi_wkv import bi_wkv
from .bi_wkv_2d import bi_wkv_2d
from .reference import bi_wkv_2d_reference, bi_wkv_reference, bi_wkv_scan_reference

__all__ = ['bi_wkv', 'bi_wkv_2d', 'bi_wkv_2d_reference', 'bi_wkv_reference', 'bi_wkv_scan_reference']
