"""Vectorised scans and reductions for Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors).

The interpreter runs a scan or reduction with a custom combine element by element: one Python call of
the combine per scalar, about 1 s for a (32, 32) tile with a 7-tuple state. The Bi-WKV kernels scan
such tiles (``tl.associative_scan``) and flip them (``tl.flip`` reduces with xor) in every program, so
the interpreter (our CPU tests) would take minutes per call. This replaces the interpreter's generic
scan and reduction along one axis by the same sequential recurrence, applied to whole slices across
the other axes: the same combine, the same order of operations per element, so the same results
(``tests/test_bi_wkv_triton.py`` compares them with the element-wise originals).

Compiled kernels are unaffected: the patch touches only the interpreter's Python implementation.
"""
import os

import numpy as np


def _vectorised_generic_scan(self, inputs):
    """``ScanOps.generic_scan`` over slices: out[0] = x[0], out[i] = combine(out[i-1], x[i])."""
    datas = [arg.handle.data for arg in inputs]
    dtypes = [arg.dtype for arg in inputs]
    axis = self.axis
    outs = [np.empty_like(d) for d in datas]

    def at(i):
        return (slice(None),) * axis + (i,)

    acc = [d[at(0)] for d in datas]
    for out, a in zip(outs, acc):
        out[at(0)] = a
    for i in range(1, datas[0].shape[axis]):
        prev = [self.to_tensor(a, dt) for a, dt in zip(acc, dtypes)]
        cur = [self.to_tensor(d[at(i)], dt) for d, dt in zip(datas, dtypes)]
        ret = self.combine_fn.fn(*prev, *cur)
        ret = ret if isinstance(ret, tuple) else (ret,)
        acc = [np.broadcast_to(r.handle.data, out[at(i)].shape) for r, out in zip(ret, outs)]
        for out, a in zip(outs, acc):
            out[at(i)] = a
    return [self.to_tensor(out, dt) for out, dt in zip(outs, dtypes)]


def _vectorised_generic_reduce(self, inputs):
    """``ReduceOps.generic_reduce`` over slices along one axis (a whole-tensor reduction falls back)."""
    if self.axis is None:
        return self.element_wise_generic_reduce(inputs)
    outs = [out.handle.data for out in _vectorised_generic_scan(self, inputs)]
    last = [np.take(out, [out.shape[self.axis] - 1] if self.keep_dims else -1, axis=self.axis) for out in outs]
    return [self.to_tensor(out, arg.dtype) for out, arg in zip(last, inputs)]


def interpreting() -> bool:
    """Whether Triton kernels run in the interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


def vectorise_interpreter_scans() -> bool:
    """Install the vectorised scan and reduction in Triton's interpreter; False if this Triton has no
    such hooks (then the interpreter stays as it is: correct, slow)."""
    try:
        from triton.runtime.interpreter import ReduceOps, ScanOps
    except ImportError:
        return False
    if not (hasattr(ScanOps, 'generic_scan') and hasattr(ReduceOps, 'generic_reduce')):
        return False
    if ScanOps.generic_scan is not _vectorised_generic_scan:
        ScanOps.element_wise_generic_scan = ScanOps.generic_scan
        ScanOps.generic_scan = _vectorised_generic_scan
        ReduceOps.element_wise_generic_reduce = ReduceOps.generic_reduce
        ReduceOps.generic_reduce = _vectorised_generic_reduce
    return True
