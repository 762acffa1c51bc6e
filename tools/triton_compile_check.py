"""Compile every Bi-WKV Triton kernel for a GPU architecture, without a GPU, and report registers and spills.

Triton's wheel ships the CUDA assembler (ptxas), so the kernels can be compiled to a cubin for a
given compute capability on any machine. This catches what the interpreter cannot: code that does not
lower or assemble, and register spills, at the launch geometry of a representative shape.

    python tools/triton_compile_check.py [--arch 90] [--json out.json]

Exits non-zero if a kernel fails to compile or spills registers. Must run WITHOUT TRITON_INTERPRET.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vision_rwkv.cli import add_debug_flag, run_tool  # noqa: E402

#: Representative shape of the launch geometry: VRWKV-S width at 64x64 tokens, bf16 inputs.
B, H, W, C = 8, 64, 64, 384
_DTYPES = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}


def recorded_launches():
    """Every kernel launch the Bi-WKV host functions make at (B, H·W, C) on meta tensors (nothing runs):
    (kernel, positional args, keyword args). Raster and cross order, training and inference forward,
    backward; 1D and 2D; the official formula's segment kernels; VRWKV6's bidirectional RWKV-6 WKV (bf16
    r, k, v, u and gradient, float32 w as the official model passes it), forward and backward."""
    from triton.runtime.jit import JITFunction

    from vision_rwkv.kernels.bi_wkv_2d_triton import bi_wkv_2d_triton_backward, bi_wkv_2d_triton_forward
    from vision_rwkv.kernels.bi_wkv_official import segment_length
    from vision_rwkv.kernels.bi_wkv_official_triton import (official_local_triton_backward,
                                                            official_local_triton_forward)
    from vision_rwkv.kernels.bi_wkv_triton import bi_wkv_triton_backward, bi_wkv_triton_forward
    from vision_rwkv.kernels.wkv6_triton import wkv6_triton_backward, wkv6_triton_forward

    T = H * W
    w, u = (torch.empty(C, device='meta') for _ in range(2))
    k, v, gy = (torch.empty(B, T, C, device='meta', dtype=torch.bfloat16) for _ in range(3))
    y, log_den = (torch.empty(B, T, C, device='meta') for _ in range(2))
    launches = []

    def record(kernel, grid):
        return lambda *args, **kwargs: launches.append((kernel, args, kwargs))

    original = JITFunction.__getitem__
    JITFunction.__getitem__ = record
    try:
        for split in (C, C // 2):
            for with_log_den in (True, False):
                bi_wkv_triton_forward(w, u, k, v, (H, W), split, with_log_den=with_log_den)
            bi_wkv_triton_backward(w, u, k, v, y, log_den, gy, (H, W), split)
        bi_wkv_2d_triton_forward(w, u, k, v, (H, W))
        bi_wkv_2d_triton_backward(w, u, k, v, y, log_den, gy, (H, W))
        official_local_triton_forward(w, k, v, y, log_den, segment_length(T))
        official_local_triton_backward(w, k, v, y, log_den, gy, y, y, segment_length(T))
        w6 = torch.empty(B, T, C, device='meta')
        u6 = torch.empty(C // 64, 64, device='meta', dtype=torch.bfloat16)
        wkv6_triton_forward(k, k, v, w6, u6)
        wkv6_triton_backward(k, k, v, w6, u6, gy)
    finally:
        JITFunction.__getitem__ = original
    return launches


def kernel_specs():
    """Distinct (label, kernel, signature, constexprs, num_warps) among the recorded launches."""
    specs = {}
    for kernel, args, kwargs in recorded_launches():
        kwargs = dict(kwargs)
        warps = kwargs.pop('num_warps', 4)
        values = dict(zip(kernel.arg_names, args), **kwargs)
        constexprs = {p.name: values[p.name] for p in kernel.params if p.is_constexpr}
        sig = {}
        for name in kernel.arg_names:
            value = values[name]
            if name in constexprs:
                sig[name] = 'constexpr'
            elif isinstance(value, torch.Tensor):
                sig[name] = '*' + _DTYPES[value.dtype]
            else:
                sig[name] = 'i32' if -2 ** 31 <= int(value) < 2 ** 31 else 'i64'
        label = f"{kernel.fn.__module__.rsplit('.', 1)[-1]}.{kernel.fn.__name__}"
        label += '(' + ', '.join(f'{k}={v}' for k, v in constexprs.items()) + ')'
        specs.setdefault((label, tuple(sig.items()), warps), (label, kernel, sig, constexprs, warps))
    return list(specs.values())


def ptxas_usage(ptx: str, arch: int):
    """(registers, spill bytes) that ptxas reports for the kernel."""
    import triton
    ptxas = Path(triton.__file__).parent / 'backends' / 'nvidia' / 'bin' / 'ptxas'
    with tempfile.NamedTemporaryFile('w', suffix='.ptx', delete=False) as f:
        f.write(ptx)
    try:
        out = subprocess.run([str(ptxas), f'-arch=sm_{arch}a' if arch >= 90 else f'-arch=sm_{arch}', '-v', f.name,
                              '-o', os.devnull], capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    text = out.stdout + out.stderr
    regs = int(re.search(r'Used (\d+) registers', text).group(1))
    spills = sum(int(n) for n in re.findall(r'(\d+) bytes spill (?:stores|loads)', text))
    return regs, spills


def compile_all(arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget('cuda', arch, 32)
    rows = []
    for name, kernel, sig, constexprs, warps in kernel_specs():
        start = time.perf_counter()
        row = dict(kernel=name, num_warps=warps)
        try:
            src = ASTSource(fn=kernel, signature=sig,
                            constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()})
            compiled = triton.compile(src, target=target, options=dict(num_warps=warps))
            row['registers'], row['spill_bytes'] = ptxas_usage(compiled.asm['ptx'], arch)
            row['shared_bytes'] = compiled.metadata.shared
            row['ok'] = row['spill_bytes'] == 0
        except Exception as e:  # report every kernel, then fail
            row['ok'] = False
            row['error'] = f'{type(e).__name__}: {str(e)[:2000]}'
        row['seconds'] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(f"{name:70s} warps {warps}  " + (f"registers {row['registers']:3d}  spills {row['spill_bytes']} B  "
              f"shared {row['shared_bytes']} B" if 'registers' in row else row['error']) +
              f"  ({row['seconds']} s)  {'ok' if row['ok'] else 'FAIL'}", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', type=int, default=90, help='compute capability, e.g. 80, 90 (default)')
    parser.add_argument('--json', help='write the results here')
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if os.environ.get('TRITON_INTERPRET', '0') not in ('', '0'):
        parser.error('unset TRITON_INTERPRET: interpreted kernels cannot be compiled')
    rows = compile_all(args.arch)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(arch=args.arch, shape=[B, H, W, C], kernels=rows), indent=2))
    failed = [r['kernel'] for r in rows if not r['ok']]
    print(f'{len(rows) - len(failed)}/{len(rows)} kernels compiled for sm_{args.arch} without spills'
          + (f'; failed: {", ".join(failed)}' if failed else ''))
    return 1 if failed else 0


if __name__ == '__main__':
    run_tool(main)
