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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Representative shape of the launch geometry: VRWKV-S width at 64x64 tokens.
B, T, C = 8, 4096, 384
#: Tensors the kernels read in the input dtype (bf16 in training); every other pointer is fp32.
INPUT_TENSORS = ('k_ptr', 'v_ptr', 'gy_ptr')


def kernel_specs():
    """(name, kernel, constexprs, num_warps) of every launch the Bi-WKV ops make, at (B, T, C)."""
    from vision_rwkv.kernels import bi_wkv_triton as k1

    plan = k1._Plan(B, T, C, None, None)
    chunk = dict(L=plan.L, BLOCK_C=plan.block_c)
    specs = [(name, getattr(k1, name), chunk, plan.warps)
             for name in ('_fwd_totals_kernel', '_bwd_totals_kernel', '_bwd_finish_kernel')]
    for with_lse in (True, False):
        specs.append((f'_fwd_finish_kernel(WITH_LSE={with_lse})', k1._fwd_finish_kernel,
                      dict(chunk, WITH_LSE=with_lse), plan.warps))
    for dist in (False, True):
        specs.append((f'_carry_kernel(WITH_DIST={dist})', k1._carry_kernel,
                      dict(L=plan.L, CB=plan.CB, BLOCK_C=plan.block_c, REVERSE=True, WITH_DIST=dist),
                      plan.carry_warps))
    return specs


def signature(kernel, constexprs):
    """Triton signature: input tensors bf16 (and y in inference, WITH_LSE=False), other pointers fp32,
    scalars i32, constexprs as given."""
    bf16 = INPUT_TENSORS + (('y_ptr',) if constexprs.get('WITH_LSE') is False else ())
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = 'constexpr'
        elif name.endswith('_ptr'):
            sig[name] = '*bf16' if name in bf16 else '*fp32'
        else:
            sig[name] = 'i32'
    return sig


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
    for name, kernel, constexprs, warps in kernel_specs():
        start = time.perf_counter()
        row = dict(kernel=name, num_warps=warps)
        try:
            src = ASTSource(fn=kernel, signature=signature(kernel, constexprs),
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
        print(f"{name:36s} warps {warps}  " + (f"registers {row['registers']:3d}  spills {row['spill_bytes']} B  "
              f"shared {row['shared_bytes']} B" if 'registers' in row else row['error']) +
              f"  ({row['seconds']} s)  {'ok' if row['ok'] else 'FAIL'}", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', type=int, default=90, help='compute capability, e.g. 80, 90 (default)')
    parser.add_argument('--json', help='write the results here')
    args = parser.parse_args(argv)
    if os.environ.get('TRITON_INTERPRET', '0') not in ('', '0'):
        parser.error('unset TRITON_INTERPRET: interpreted kernels cannot be compiled')
    rows = compile_all(args.arch)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(arch=args.arch, shape=[B, T, C], kernels=rows), indent=2))
    failed = [r['kernel'] for r in rows if not r['ok']]
    print(f'{len(rows) - len(failed)}/{len(rows)} kernels compiled for sm_{args.arch} without spills'
          + (f'; failed: {", ".join(failed)}' if failed else ''))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
