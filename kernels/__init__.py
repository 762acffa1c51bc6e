"""Bidirectional WKV operators of Vision-RWKV (importable as ``vision_rwkv.kernels``).

``bi_wkv`` runs Triton kernels on CUDA tensors and a chunked PyTorch scan on CPU tensors;
``bi_wkv_reference`` is the float64 O(T^2) definition the tests compare against.
"""
from .bi_wkv import bi_wkv
from .reference import bi_wkv_reference

__all__ = ['bi_wkv', 'bi_wkv_reference']
