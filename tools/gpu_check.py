"""GPU check: the one command to run first on a machine with a GPU (about 5 minutes on one H200;
``--quick`` about 2).

Sections, in order (``--sections`` picks some):
  kernels       every Triton Bi-WKV kernel (raster, column-major, cross, 2D; forward and backward; fp32,
                fp16, bf16) against the float64 references of ``vision_rwkv.kernels``: T = 1, odd C,
                grids 1xT and Tx1, non-contiguous inputs, T = 65536 (row-subset reference), and a
                forward over more than 2^31 elements; VRWKV6's bi_wkv6 likewise (extreme decays, T = 4096,
                more than 2^31 elements) against its float64 recurrence (see ``gpu_check_kernels``).
  model_check   VRWKV-T and VRWKV-S forward and backward on the GPU in fp32 against the float64 CPU
                model with the same weights (logits and a few parameter gradients).
  bench_ops     Bi-WKV and VRWKV6's bi_wkv6 forward and forward+backward against SDPA (flash, 6 heads of
                64) at C = 384, B = 8, bf16, T from 196 to 65536, with achieved GB/s and its share of the
                measured device-to-device copy bandwidth; and the forward at B = 8, T = 16384, C = 768.
  bench_models  VRWKV-T/S against timm ViT-T/S (SDPA attention) at 224, 512, 1024, 2048: images/s and
                peak memory of inference (bf16 autocast) and of a training step (AdamW, bf16 autocast).
  bench_sam     RWKV-SAM image encoders tiny/small/base against segment-anything's ViT-B image
                encoder at 1024, bf16 weights, batch 1 and 8 (ViT-B only if segment-anything imports;
                there is no substitute baseline).
  multi_device  the kernels on tensors of the second GPU (only with two or more).

Prints a PASS/FAIL table and markdown tables; writes gpu_check.json and gpu_check.md under --out
after every step (a killed run leaves what it measured). Exit status 1 when a check fails or a step
raises; out-of-memory in a benchmark is reported, not a failure. Every section has a time budget;
what it leaves out is listed under "Skipped", as are parts whose packages are missing (the script
needs only torch, triton, timm and this project; mmcv, mmseg, mmengine, segment-anything and
pycocotools are optional).

Without CUDA, or with --smoke, everything runs at tiny shapes with tiny models (on CPU through
Triton's interpreter), so that the test suite keeps this script working.

Usage: python tools/gpu_check.py [--out gpu_check_results] [--quick | --smoke] [--sections a,b] [--seed N]
"""
import argparse
import copy
import faulthandler
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
import traceback
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

if not torch.cuda.is_available():  # before triton is imported (timm imports it)
    os.environ.setdefault('TRITON_INTERPRET', '1')

import torch.nn.functional as F  # noqa: E402
import timm  # noqa: E402
import triton  # noqa: E402

TOOLS = str(Path(__file__).resolve().parent)
if TOOLS not in sys.path:  # the sibling modules, as when run as a script
    sys.path.insert(0, TOOLS)
sys.path.append(str(Path(TOOLS).parent))  # the checkout, last: an installed vision_rwkv comes first

import vision_rwkv  # noqa: E402,F401  (registers the VRWKV models in timm)
from benchmark import op_inputs  # noqa: E402
from gpu_check_kernels import (Case, kernel_cases, reference_self_checks, rel_err, run_case,  # noqa: E402
                               second_device_cases)
from vision_rwkv.cli import add_debug_flag, run_tool  # noqa: E402
from vision_rwkv.kernels import bi_wkv, bi_wkv6  # noqa: E402

SECTIONS = ('kernels', 'model_check', 'bench_ops', 'bench_models', 'bench_sam', 'multi_device')
FAMILIES = {'tiny': ('vit_tiny_patch16_224', 'vrwkv_tiny_patch16_224'),
            'small': ('vit_small_patch16_224', 'vrwkv_small_patch16_224')}
SAM_VIT_B = 'sam_vit_b'

# Per mode: seconds per section (time a section leaves unused passes to the next ones), the overall
# budget, the hard limit (a stack dump and exit 1 past it), and the shapes of each section.
PLANS = {
    'full': dict(
        budgets=dict(kernels=120, model_check=25, bench_ops=40, bench_models=65, bench_sam=25, multi_device=10),
        total=270, hard_limit=420,
        model_check=dict(models=('vrwkv_tiny_patch16_224', 'vrwkv_small_patch16_224'), img=224, batch=2, kwargs={}),
        ops=dict(B=8, C=384, heads=6, seq_lens=(196, 1024, 4096, 16384, 65536), official_T=4096, target=(8, 16384, 768),
                 copy_bytes=2 ** 30, seconds=0.4),
        models=dict(sizes=(224, 512, 1024, 2048), batch={224: 64, 512: 16, 1024: 4, 2048: 1},
                    families=('tiny', 'small'), kwargs={}, seconds=0.4),
        sam=dict(variants=('tiny', 'small', 'base'), img=1024, batches=(1, 8), kwargs={}, seconds=0.4)),
    'quick': dict(
        budgets=dict(kernels=45, model_check=15, bench_ops=15, bench_models=20, bench_sam=10, multi_device=10),
        total=100, hard_limit=200,
        model_check=dict(models=('vrwkv_tiny_patch16_224', 'vrwkv_small_patch16_224'), img=224, batch=2, kwargs={}),
        ops=dict(B=8, C=384, heads=6, seq_lens=(196, 4096, 16384), official_T=4096, target=(8, 16384, 768),
                 copy_bytes=2 ** 28, seconds=0.15),
        models=dict(sizes=(224, 1024), batch={224: 64, 1024: 4}, families=('tiny', 'small'), kwargs={},
                    seconds=0.15),
        sam=dict(variants=('tiny', 'small', 'base'), img=1024, batches=(1, 8), kwargs={}, seconds=0.15)),
    'smoke': dict(
        budgets=dict(kernels=600, model_check=600, bench_ops=600, bench_models=600, bench_sam=600, multi_device=600),
        total=3600, hard_limit=0,
        model_check=dict(models=('vrwkv_tiny_patch16_224', 'vrwkv_small_patch16_224'), img=32, batch=2,
                         kwargs=dict(depth=1)),
        ops=dict(B=1, C=48, heads=6, seq_lens=(4, 8), official_T=8, target=(1, 4, 48), copy_bytes=2 ** 20, seconds=0.0),
        models=dict(sizes=(32, 48), batch={32: 2, 48: 1}, families=('tiny',), kwargs=dict(depth=1), seconds=0.0),
        sam=dict(variants=('tiny',), img=32, batches=(1, 2), kwargs=dict(depth=1), seconds=0.0)),
}

# fp32 model on the GPU (TF32 off) against the float64 model: we measured 5e-7 (logits) and up to
# 2e-6 (parameter gradients) between fp32 and float64 on CPU for both models; the tolerances are
# about 100x that, while a wrong kernel gives 1e-2 or more.
MODEL_TOL = dict(logits=1e-4, grad=1e-3)
CHECKED_PARAMS = ('patch_embed.projection.weight', 'layers.0.att.spatial_decay', 'layers.0.att.spatial_first',
                  'layers.0.att.key.weight', 'head.weight')


# ---- device, time and budget ---------------------------------------------------------------------
class Device:
    """Synchronisation, timing and memory statistics of one torch device (CUDA or CPU)."""

    def __init__(self, name: str):
        self.device = torch.device(name)
        self.cuda = self.device.type == 'cuda'

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def elapsed_ms(self, fn: Callable[[], object], calls: int) -> float:
        """Time of ``calls`` back-to-back calls of fn: CUDA events on the GPU, the wall clock on CPU."""
        if not self.cuda:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            return (time.perf_counter() - t0) * 1e3
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> Optional[float]:
        return torch.cuda.max_memory_allocated(self.device) / 2 ** 30 if self.cuda else None

    def free_bytes(self) -> Optional[int]:
        """Free device memory (None on CPU, or when the device no longer answers after a CUDA error)."""
        try:
            return torch.cuda.mem_get_info(self.device)[0] if self.cuda else None
        except RuntimeError:
            return None

    def release(self) -> None:
        """Free what the last step left (never raises: after a sticky CUDA error every call fails)."""
        gc.collect()
        if self.cuda:
            try:
                torch.cuda.empty_cache()
            except RuntimeError:
                pass


def measure_ms(fn: Callable[[], object], dev: Device, seconds: float, max_calls: int = 100) -> float:
    """Milliseconds per call of fn: one warm-up call (compiles, autotunes), one timed call, then, if
    ``seconds`` allows three or more calls, the median of three timed groups of equal size. With
    ``seconds`` 0, the first call alone (compile included: smoke runs)."""
    if seconds <= 0:
        return dev.elapsed_ms(fn, 1)
    fn()
    dev.sync()
    first = dev.elapsed_ms(fn, 1)
    calls = min(max_calls, int(seconds * 1e3 / max(first, 1e-3)))
    if calls < 3:
        return first
    per_group = calls // 3
    return statistics.median(dev.elapsed_ms(fn, per_group) / per_group for _ in range(3))


class Budget:
    """Seconds left to a section."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or 'out of memory' in str(error).lower()


@contextmanager
def exact_fp32():
    """fp32 matmuls and convolutions without TF32 (cuDNN allows TF32 by default)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---- report ---------------------------------------------------------------------------------------
def fmt(value) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.3g}' if value == value else 'nan'
    return str(value)


def table(rows: List[Dict], keys: List[str]) -> str:
    if not rows:
        return '(none)'
    lines = ['| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
    lines += ['| ' + ' | '.join(fmt(row.get(k)) for k in keys) + ' |' for row in rows]
    return '\n'.join(lines)


class Report:
    """Results of all sections; saved as JSON and markdown after every step."""

    def __init__(self, out_dir: Path, machine: Dict, mode: str):
        self.out_dir = out_dir
        self.data = {'machine': machine, 'mode': mode, 'skipped': [], 'errors': []}
        for name in SECTIONS:
            self.data[name] = {'status': 'not run', 'rows': [], 'notes': []}

    def rows(self, section: str) -> List[Dict]:
        return self.data[section]['rows']

    def note(self, section: str, text: str) -> None:
        self.data[section]['notes'].append(text)
        print(f'[{section}] {text}', flush=True)

    def skip(self, section: str, item: str, reason: str) -> None:
        self.data['skipped'].append(dict(section=section, item=item, reason=reason))
        print(f'[{section}] skipped {item}: {reason}', flush=True)

    def error(self, section: str, item: str, error: BaseException) -> None:
        text = ''.join(traceback.format_exception_only(type(error), error)).strip()
        self.data['errors'].append(dict(section=section, item=item, error=text))
        print(f'[{section}] ERROR {item}: {text}\n{traceback.format_exc(limit=-4)}', flush=True)

    def failures(self) -> int:
        bad = sum(row.get('status') in ('FAIL', 'ERROR') for name in SECTIONS for row in self.rows(name))
        return bad + len(self.data['errors'])

    def save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.data['summary'] = dict(failures=self.failures(), exit_code=int(self.failures() > 0))
        for name, text in (('gpu_check.json', json.dumps(self.data, indent=1, default=str)),
                           ('gpu_check.md', self.markdown(details=True))):
            tmp = self.out_dir / (name + '.tmp')
            tmp.write_text(text)
            tmp.replace(self.out_dir / name)

    def markdown(self, details: bool) -> str:
        m = self.data['machine']
        gpus = f"{m['gpu_count']} x {m['gpu']} ({fmt(m['gpu_memory_GiB'])} GiB, sm {m['capability']})"
        out = [f"# GPU check ({self.data['mode']}), {m['date']}", '',
               f"{gpus if m['gpu_count'] else m['gpu']}; torch {m['torch']} (CUDA {m['cuda']}), "
               f"triton {m['triton']}, timm {m['timm']}, Python {m['python']}; "
               f"seed {m['seed']} (--seed to replay)", '']
        out += self._kernel_markdown(details)
        sections = [
            ('model_check', 'Correctness: VRWKV on the device in fp32 vs the float64 CPU model',
             ['model', 'quantity', 'rel_err', 'tol', 'status']),
            ('bench_ops', '(a) Bi-WKV vs SDPA',
             ['B', 'T', 'C', 'op', 'fwd_ms', 'fwd_bwd_ms', 'fwd_GBps', 'fwd_pct_copy', 'fwd_bwd_GBps',
              'fwd_bwd_pct_copy', 'v6_fwd_ms', 'v6_fwd_bwd_ms', 'v6_fwd_GBps', 'v6_fwd_bwd_GBps', 'sdpa_fwd_ms',
              'sdpa_fwd_bwd_ms', 'sdpa_over_biwkv_fwd_bwd', 'sdpa_over_v6_fwd_bwd', 'status']),
            ('bench_models', '(b) VRWKV vs ViT',
             ['model', 'img_size', 'batch', 'mode', 'ms', 'images_per_s', 'peak_GiB', 'speed_vs_vit',
              'mem_vs_vit', 'status']),
            ('bench_sam', '(c) SAM image encoders',
             ['model', 'img_size', 'batch', 'params_M', 'ms', 'images_per_s', 'peak_GiB', 'speed_vs_vit_b',
              'status']),
        ]
        for name, title, keys in sections:
            section = self.data[name]
            out += [f'## {title}', ''] + [f'- {n}' for n in section['notes']]
            out += ['', table(section['rows'], keys) if section['status'] != 'not run' else '(not run)', '']
        out += self._list_markdown()
        return '\n'.join(out)

    def _kernel_markdown(self, details: bool) -> List[str]:
        out = []
        for name, title in (('kernels', 'Correctness: Triton kernels vs float64 references'),
                            ('multi_device', 'Correctness: kernels on the second device')):
            section = self.data[name]
            out += [f'## {title}', ''] + [f'- {n}' for n in section['notes']] + ['']
            if section['status'] == 'not run':
                out += ['(not run)', '']
                continue
            out += [table(worst_per_case(section['rows']), ['case', 'status', 'worst', 'rel_err', 'tol']), '']
            if details and section['rows']:
                out += ['### Every quantity', '',
                        table(section['rows'], ['case', 'reference', 'quantity', 'rel_err', 'tol', 'status', 'error']),
                        '']
        return out

    def _list_markdown(self) -> List[str]:
        out = ['## Skipped', '']
        out += [f"- {s['section']}: {s['item']} ({s['reason']})" for s in self.data['skipped']] or ['(nothing)']
        out += ['', '## Errors', '']
        out += [f"- {e['section']}: {e['item']}: {e['error']}" for e in self.data['errors']] or ['(none)']
        summary = self.data.get('summary', {})
        checks = [r for n in ('kernels', 'model_check', 'multi_device') for r in self.rows(n)]
        passed = sum(r.get('status') == 'PASS' for r in checks)
        times = ', '.join(f"{n} {self.data[n]['seconds']:.0f}/{self.data[n]['budget_s']:.0f} s" for n in SECTIONS
                          if 'seconds' in self.data[n])
        out += ['', '## Summary', '',
                f"{passed} checks passed, {summary.get('failures', 0)} failures (failed checks and errors), "
                f"{len(self.data['skipped'])} items skipped; exit code {summary.get('exit_code', '-')}", '',
                f'time used / budget: {times or "-"}', '']
        return out


def worst_per_case(rows: List[Dict]) -> List[Dict]:
    """One row per case: FAIL/ERROR if any quantity failed, with the quantity closest to (or past) its tolerance."""
    cases: Dict[str, Dict] = {}
    for row in rows:
        ratio = row['rel_err'] / row['tol'] if row.get('tol') and row.get('rel_err') is not None else float('inf')
        best = cases.get(row['case'])
        if best is None or ratio > best['_ratio']:
            cases[row['case']] = dict(case=row['case'], worst=row['quantity'], rel_err=row.get('rel_err'),
                                      tol=row.get('tol'), _ratio=ratio, status=row['status'])
        if row['status'] != 'PASS':
            cases[row['case']]['status'] = row['status']
    return [{k: v for k, v in c.items() if k != '_ratio'} for c in cases.values()]


# ---- context ------------------------------------------------------------------------------------
class Context:
    """What every section gets: the device, the mode's plan, the report and the section's budget."""

    def __init__(self, dev: Device, mode: str, report: Report):
        self.dev = dev
        self.mode = mode
        self.plan = PLANS[mode]
        self.report = report
        self.budget = Budget(0)

    def out_of_time(self, section: str, item: str, estimate_s: float = 0.) -> bool:
        """True (and the item recorded as skipped) when the section's budget cannot cover ``estimate_s``."""
        if self.budget.left() > estimate_s:
            return False
        self.report.skip(section, item, f'time budget ({self.budget.seconds:.0f} s for the section)')
        return True


# ---- kernels ------------------------------------------------------------------------------------
def check_case(ctx: Context, section: str, case: Case, device: torch.device) -> None:
    """Run one kernel case (memory permitting) and record its rows; an exception is an ERROR row."""
    free = Device(str(device)).free_bytes()
    if free is not None and case.bytes_needed() > 0.9 * free:
        ctx.report.skip(section, case.name, f'needs ~{case.bytes_needed() / 2 ** 30:.0f} GiB, '
                                            f'{free / 2 ** 30:.0f} GiB free')
        return
    t0 = time.monotonic()
    try:
        rows = run_case(case, device)
    except Exception as e:  # noqa: BLE001  (any failure of a kernel is a result)
        text = ''.join(traceback.format_exception_only(type(e), e)).strip()
        rows = [dict(case=case.name, quantity='-', rel_err=None, tol=None, status='ERROR', error=text)]
        traceback.print_exc(limit=-4)
    Device(str(device)).release()
    ctx.report.rows(section).extend(rows)
    worst = worst_per_case(rows)[0]
    print(f"[{section}] {worst['status']:5s} {case.name}: worst {worst['worst']} {fmt(worst['rel_err'])} "
          f"(tol {fmt(worst['tol'])}) {time.monotonic() - t0:.1f} s", flush=True)
    ctx.report.save()


def section_kernels(ctx: Context) -> None:
    ctx.report.note('kernels', 'norm-wise relative error; tolerance: eps of the stored dtype + '
                               '16·eps32·(sqrt(T) + T/256) (gradients 10x), see gpu_check_kernels.tolerance')
    ctx.report.rows('kernels').extend(reference_self_checks(torch.device('cpu')))
    for case in kernel_cases(ctx.mode):
        if not ctx.out_of_time('kernels', case.name, case.B * case.T * case.C / 5e8):
            check_case(ctx, 'kernels', case, ctx.dev.device)


def section_multi_device(ctx: Context) -> None:
    count = torch.cuda.device_count() if ctx.dev.cuda else 0
    if count < 2:
        ctx.report.skip('multi_device', 'kernels on cuda:1', f'{count} CUDA device(s)')
        return
    for case in second_device_cases(ctx.mode, 'cuda:1'):
        if not ctx.out_of_time('multi_device', case.name):
            check_case(ctx, 'multi_device', case, torch.device('cuda:1'))


# ---- models against float64 ---------------------------------------------------------------------
def check_model(ctx: Context, name: str) -> List[Dict]:
    """Logits and a few parameter gradients of the fp32 model on the device against the float64 model
    on CPU (same weights, same input, loss sum(logits * g) with a fixed random g)."""
    p = ctx.plan['model_check']
    model = timm.create_model(name, img_size=p['img'], **p['kwargs']).eval()
    reference = copy.deepcopy(model).double()
    model = model.to(ctx.dev.device)
    x = torch.randn(p['batch'], 3, p['img'], p['img'])
    g = torch.randn(p['batch'], model.num_classes)
    names = [n for n in CHECKED_PARAMS if n in dict(model.named_parameters())]
    names.append([n for n, _ in model.named_parameters() if n.startswith('layers.')][-1])  # last block

    def run(m, device, dtype):
        params = dict(m.named_parameters())
        logits = m(x.to(device, dtype))
        grads = torch.autograd.grad((logits * g.to(device, dtype)).sum(), [params[n] for n in names])
        return logits.detach().cpu(), [gr.cpu() for gr in grads]

    with exact_fp32():
        logits, grads = run(model, ctx.dev.device, torch.float32)
    logits_ref, grads_ref = run(reference, 'cpu', torch.float64)
    rows = [dict(model=name, quantity='logits', rel_err=rel_err(logits, logits_ref), tol=MODEL_TOL['logits'])]
    rows += [dict(model=name, quantity=f'grad {n}', rel_err=rel_err(gr, gr_ref), tol=MODEL_TOL['grad'])
             for n, gr, gr_ref in zip(names, grads, grads_ref)]
    for row in rows:
        row['status'] = 'PASS' if row['rel_err'] <= row['tol'] else 'FAIL'
    return rows


def section_model_check(ctx: Context) -> None:
    p = ctx.plan['model_check']
    smoke = f", smoke models {p['kwargs']}" if p['kwargs'] else ''
    ctx.report.note('model_check', f"batch {p['batch']} at {p['img']}px{smoke}; tolerances {MODEL_TOL} "
                                   '(about 100x the fp32 error measured on CPU)')
    for name in p['models']:
        if ctx.out_of_time('model_check', name):
            continue
        t0 = time.monotonic()
        try:
            rows = check_model(ctx, name)
        except Exception as e:  # noqa: BLE001
            text = ''.join(traceback.format_exception_only(type(e), e)).strip()
            rows = [dict(model=name, quantity='-', status='ERROR', error=text)]
            traceback.print_exc(limit=-4)
        ctx.dev.release()
        ctx.report.rows('model_check').extend(rows)
        bad = [r for r in rows if r['status'] != 'PASS']
        print(f"[model_check] {'FAIL' if bad else 'PASS'} {name}: logits rel err {fmt(rows[0].get('rel_err'))} "
              f"{time.monotonic() - t0:.1f} s", flush=True)
        ctx.report.save()


# ---- (a) Bi-WKV against SDPA ----------------------------------------------------------------------
def guarded(ctx: Context, section: str, item: str, fn: Callable[[], Dict]) -> Dict:
    """fn's result; {'status': 'OOM'} on out-of-memory; {'status': 'error'} (and a report error) otherwise."""
    try:
        return dict(fn(), status='ok')
    except Exception as e:  # noqa: BLE001
        ctx.dev.release()
        if is_oom(e):
            print(f'[{section}] {item}: out of memory', flush=True)
            return dict(status='OOM')
        ctx.report.error(section, item, e)
        return dict(status='error')


def bench_bi_wkv(dev: Device, B: int, T: int, C: int, seconds: float, backward: bool = True,
                 formula: str = 'paper') -> Dict:
    w, u, k, v = op_inputs(B, T, C, torch.bfloat16, dev.device)
    gy = torch.randn_like(k)

    def fwd():
        with torch.no_grad():
            bi_wkv(w, u, k, v, backend='triton', formula=formula)

    def fwd_bwd():
        torch.autograd.grad(bi_wkv(w, u, k, v, backend='triton', formula=formula), (w, u, k, v), gy)

    out = dict(fwd_ms=measure_ms(fwd, dev, seconds))
    if backward:
        out['fwd_bwd_ms'] = measure_ms(fwd_bwd, dev, seconds)
    return out


def bench_bi_wkv6(dev: Device, B: int, T: int, C: int, seconds: float) -> Dict:
    """bi_wkv6 forward and forward+backward (Triton): bf16 r, k, v, u, float32 w in the models' range."""
    r, k, v = (torch.randn(B, T, C, device=dev.device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    w = (torch.rand(B, T, C, device=dev.device) * 7 - 7).requires_grad_()
    u = torch.randn(C // 64, 64, device=dev.device, dtype=torch.bfloat16, requires_grad=True)
    inputs = (r, k, v, w, u)
    gy = torch.randn_like(r)

    def fwd():
        with torch.no_grad():
            bi_wkv6(*inputs, backend='triton')

    def fwd_bwd():
        torch.autograd.grad(bi_wkv6(*inputs, backend='triton'), inputs, gy)

    return dict(v6_fwd_ms=measure_ms(fwd, dev, seconds), v6_fwd_bwd_ms=measure_ms(fwd_bwd, dev, seconds))


def sdpa_context(dev: Device):
    """The flash backend on CUDA; SDPA's default choice on CPU (smoke runs)."""
    if not dev.cuda:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel(SDPBackend.FLASH_ATTENTION)


def bench_sdpa(dev: Device, B: int, T: int, C: int, heads: int, seconds: float) -> Dict:
    q, k, v = (torch.randn(B, heads, T, C // heads, device=dev.device, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    go = torch.randn_like(q)

    def fwd():
        with torch.no_grad(), sdpa_context(dev):
            F.scaled_dot_product_attention(q, k, v)

    def fwd_bwd():
        with sdpa_context(dev):
            torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), go)

    return dict(sdpa_fwd_ms=measure_ms(fwd, dev, seconds), sdpa_fwd_bwd_ms=measure_ms(fwd_bwd, dev, seconds))


def copy_bandwidth_gbps(dev: Device, nbytes: int, seconds: float) -> float:
    """Device-to-device copy bandwidth: 2·nbytes (read and write) per ``dst.copy_(src)``."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev.device)
    dst = torch.empty_like(src)
    ms = measure_ms(lambda: dst.copy_(src), dev, max(seconds, 0.05))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def add_bandwidth(row: Dict, copy_gbps: float) -> None:
    """GB/s of the bytes Bi-WKV must move (bf16, 2 bytes): forward 3·B·T·C·2 (read k, v; write y);
    forward+backward 8·B·T·C·2 (also read k, v, gy and write gk, gv)."""
    n = row['B'] * row['T'] * row['C'] * 2
    for key, factor in (('fwd', 3), ('fwd_bwd', 8)):
        ms = row.get(f'{key}_ms')
        if ms:
            row[f'{key}_GBps'] = factor * n / (ms * 1e-3) / 1e9
            row[f'{key}_pct_copy'] = 100 * row[f'{key}_GBps'] / copy_gbps
    if row.get('fwd_bwd_ms') and row.get('sdpa_fwd_bwd_ms'):
        row['sdpa_over_biwkv_fwd_bwd'] = row['sdpa_fwd_bwd_ms'] / row['fwd_bwd_ms']
    # bi_wkv6 (bf16 r, k, v, float32 w: 2 units of 2 bytes): forward reads r, k, v, w, writes y (6 units);
    # the backward also reads them and gy and writes gr, gk, gv, gw (11 more)
    for key, factor in (('fwd', 6), ('fwd_bwd', 17)):
        ms = row.get(f'v6_{key}_ms')
        if ms:
            row[f'v6_{key}_GBps'] = factor * n / (ms * 1e-3) / 1e9
    if row.get('v6_fwd_bwd_ms') and row.get('sdpa_fwd_bwd_ms'):
        row['sdpa_over_v6_fwd_bwd'] = row['sdpa_fwd_bwd_ms'] / row['v6_fwd_bwd_ms']


def section_bench_ops(ctx: Context) -> None:
    p, dev, report = ctx.plan['ops'], ctx.dev, ctx.report
    copy_gbps = copy_bandwidth_gbps(dev, p['copy_bytes'], p['seconds'])
    report.note('bench_ops', f"device-to-device copy: {copy_gbps:.1f} GB/s ({p['copy_bytes'] / 2 ** 20:.0f} MiB, "
                             f"read + write counted)")
    report.note('bench_ops', 'GB/s = bytes Bi-WKV must move / time: fwd 3·B·T·C·2 (read k, v; write y, bf16), '
                             'fwd+bwd 8·B·T·C·2 (plus read k, v, gy; write gk, gv); '
                             'pct_copy = share of the copy GB/s')
    report.note('bench_ops', 'v6_*: VRWKV6\'s bi_wkv6 (bf16 r, k, v, u, float32 w; C rounded up to heads of 64); '
                             'GB/s = fwd 6·B·T·C·2 (read r, k, v, w; write y), fwd+bwd 17·B·T·C·2')
    report.note('bench_ops', f"SDPA: {p['heads']} heads of {p['C'] // p['heads']}, "
                             f"{'flash backend' if dev.cuda else 'default backend (CPU)'}; bf16; ms per call")
    report.data['bench_ops']['copy_GBps'] = copy_gbps
    B, C = p['B'], p['C']
    last: Optional[Tuple[float, int]] = None  # (seconds, T) of the previous size
    for T in p['seq_lens']:
        item = f'Bi-WKV and SDPA at B={B} T={T} C={C}'
        estimate = last[0] * T / last[1] if last else 0.
        if ctx.out_of_time('bench_ops', item, estimate) or not memory_allows(ctx, 'bench_ops', item, 40 * B * T * C):
            continue
        t0 = time.monotonic()
        row = dict(B=B, T=T, C=C, op='bi_wkv raster / sdpa')
        ours = guarded(ctx, 'bench_ops', f'Bi-WKV T={T}', lambda: bench_bi_wkv(dev, B, T, C, p['seconds']))
        v6 = guarded(ctx, 'bench_ops', f'bi_wkv6 T={T}',
                     lambda: bench_bi_wkv6(dev, B, T, -(-C // 64) * 64, p['seconds']))
        sdpa = guarded(ctx, 'bench_ops', f'SDPA T={T}', lambda: bench_sdpa(dev, B, T, C, p['heads'], p['seconds']))
        row.update(ours, **{key: value for key, value in v6.items() if key != 'status'}, **sdpa)
        row['status'] = ('ok' if ours['status'] == v6['status'] == sdpa['status'] == 'ok'
                         else f"bi_wkv {ours['status']}, bi_wkv6 {v6['status']}, sdpa {sdpa['status']}")
        add_bandwidth(row, copy_gbps)
        dev.release()
        last = (time.monotonic() - t0, T)
        report.rows('bench_ops').append(row)
        print(f"[bench_ops] T={T}: Bi-WKV fwd {fmt(row.get('fwd_ms'))} ms, fwd+bwd {fmt(row.get('fwd_bwd_ms'))} ms; "
              f"bi_wkv6 {fmt(row.get('v6_fwd_ms'))} / {fmt(row.get('v6_fwd_bwd_ms'))} ms; "
              f"SDPA {fmt(row.get('sdpa_fwd_ms'))} / {fmt(row.get('sdpa_fwd_bwd_ms'))} ms", flush=True)
        report.save()
    T = p['official_T']
    item = f"Bi-WKV formula='official' at B={B} T={T} C={C}"
    if not ctx.out_of_time('bench_ops', item) and memory_allows(ctx, 'bench_ops', item, 40 * B * T * C):
        row = dict(B=B, T=T, C=C, op="bi_wkv raster, formula='official'")
        row.update(guarded(ctx, 'bench_ops', item, lambda: bench_bi_wkv(dev, B, T, C, p['seconds'],
                                                                         formula='official')))
        add_bandwidth(row, copy_gbps)
        report.rows('bench_ops').append(row)
        report.save()
    B, T, C = p['target']
    item = f'target shape: Bi-WKV forward at B={B} T={T} C={C}'
    if not ctx.out_of_time('bench_ops', item) and memory_allows(ctx, 'bench_ops', item, 20 * B * T * C):
        row = dict(B=B, T=T, C=C, op='bi_wkv raster fwd (target shape)')
        row.update(guarded(ctx, 'bench_ops', item, lambda: bench_bi_wkv(dev, B, T, C, p['seconds'], backward=False)))
        add_bandwidth(row, copy_gbps)
        report.rows('bench_ops').append(row)
        report.save()


def memory_allows(ctx: Context, section: str, item: str, nbytes: int) -> bool:
    free = ctx.dev.free_bytes()
    if free is None or nbytes <= 0.9 * free:
        return True
    ctx.report.skip(section, item, f'needs ~{nbytes / 2 ** 30:.1f} GiB, {free / 2 ** 30:.1f} GiB free')
    return False


# ---- (b) VRWKV against ViT ------------------------------------------------------------------------
def bench_model(dev: Device, model: torch.nn.Module, batch: int, size: int, train: bool, seconds: float) -> Dict:
    """ms per batch, images/s and peak allocated memory (weights included) of inference or a training step."""
    x = torch.randn(batch, 3, size, size, device=dev.device)

    def autocast():
        return torch.autocast(device_type=dev.device.type, dtype=torch.bfloat16)

    if train:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        target = torch.randint(0, model.num_classes, (batch,), device=dev.device)

        def step():
            with autocast():
                loss = F.cross_entropy(model(x), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        model.eval()

        def step():
            with torch.inference_mode(), autocast():
                model(x)
    dev.reset_peak()
    ms = measure_ms(step, dev, seconds, max_calls=50)
    return dict(ms=ms, images_per_s=batch / ms * 1e3, peak_GiB=dev.peak_gib())


def section_bench_models(ctx: Context) -> None:
    p, report = ctx.plan['models'], ctx.report
    report.note('bench_models', 'bf16 autocast, fp32 weights; training step = forward, cross-entropy, backward, '
                                'AdamW step; peak_GiB = peak allocated memory (weights, optimizer state included); '
                                'ViT attention: timm (F.scaled_dot_product_attention)'
                + (f"; smoke models {p['kwargs']}" if p['kwargs'] else ''))
    last: Dict[Tuple[str, bool], Tuple[float, int]] = {}  # (model, train) -> (seconds, pixels of the batch)
    for size in p['sizes']:
        batch = p['batch'][size]
        for family in p['families']:
            group = []
            for name in FAMILIES[family]:
                group += bench_model_pair(ctx, name, size, batch, last)
            add_ratios(group)
            report.rows('bench_models').extend(group)
            report.save()


def bench_model_pair(ctx: Context, name: str, size: int, batch: int, last: Dict) -> List[Dict]:
    """Inference and training rows of one model at one size (the model built once)."""
    p, dev = ctx.plan['models'], ctx.dev
    rows, model = [], None
    for train in (False, True):
        item = f"{name} {size}px batch {batch} {'train' if train else 'inference'}"
        pixels = batch * size * size
        seconds, prev_pixels = last.get((name, train), (0., pixels))
        if ctx.out_of_time('bench_models', item, seconds * pixels / prev_pixels):
            continue
        t0 = time.monotonic()
        row = dict(model=name, img_size=size, batch=batch, mode='train' if train else 'inference')
        try:
            if model is None:
                model = timm.create_model(name, img_size=size, **p['kwargs']).to(dev.device)
            row.update(bench_model(dev, model, batch, size, train, p['seconds']), status='ok')
        except Exception as e:  # noqa: BLE001
            row['status'] = 'OOM' if is_oom(e) else 'error'
            if not is_oom(e):
                ctx.report.error('bench_models', item, e)
            model = None
            dev.release()
        last[(name, train)] = (time.monotonic() - t0, pixels)
        rows.append(row)
        print(f"[bench_models] {item}: {fmt(row.get('images_per_s'))} img/s, peak {fmt(row.get('peak_GiB'))} GiB "
              f"[{row['status']}]", flush=True)
    del model
    dev.release()
    return rows


def add_ratios(group: List[Dict]) -> None:
    """On VRWKV rows: images/s and peak memory relative to the ViT row of the same size and mode."""
    for row in group:
        vit = next((r for r in group if r['model'].startswith('vit') and r['mode'] == row['mode']), None)
        if row['model'].startswith('vrwkv') and vit and row.get('images_per_s') and vit.get('images_per_s'):
            row['speed_vs_vit'] = row['images_per_s'] / vit['images_per_s']
            if row.get('peak_GiB') and vit.get('peak_GiB'):
                row['mem_vs_vit'] = row['peak_GiB'] / vit['peak_GiB']


# ---- (c) SAM image encoders ----------------------------------------------------------------------
def sam_builders(ctx: Context) -> Dict[str, Callable[[], torch.nn.Module]]:
    """Encoder constructors of the models that import here, the baseline first; what does not import
    is recorded as skipped."""
    p, builders = ctx.plan['sam'], {}
    try:
        import segment_anything  # noqa: F401
        from benchmark_sam import build_encoder  # segment-anything's ViT-B image encoder, img_size free
        builders[SAM_VIT_B] = lambda: build_encoder(SAM_VIT_B, p['img'])
    except ImportError as e:
        ctx.report.skip('bench_sam', f'segment-anything ViT-B ({SAM_VIT_B})',
                        f'segment_anything does not import ({e}); no substitute baseline is measured')
    try:
        from vision_rwkv.sam import rwkv_sam_model_registry
        for variant in p['variants']:
            builders[variant] = (lambda v=variant: rwkv_sam_model_registry[v](img_size=p['img'], **p['kwargs'])
                                 .image_encoder)
    except Exception as e:  # noqa: BLE001  (a missing dependency of vision_rwkv.sam)
        for variant in p['variants']:
            ctx.report.skip('bench_sam', f'RWKV-SAM {variant}', f'vision_rwkv.sam does not import: {e}')
    return builders


def section_bench_sam(ctx: Context) -> None:
    p, dev, report = ctx.plan['sam'], ctx.dev, ctx.report
    report.note('bench_sam', f"image encoders only, random weights, bf16 weights and input, inference; {p['img']}px"
                + (f"; smoke encoders {p['kwargs']}" if p['kwargs'] else ''))
    for name, build in sam_builders(ctx).items():
        rows, encoder = [], None
        for batch in p['batches']:
            item = f'{name} {p["img"]}px batch {batch}'
            if ctx.out_of_time('bench_sam', item):
                continue
            row = dict(model=name, img_size=p['img'], batch=batch)
            try:
                if encoder is None:
                    encoder = build().to(dev.device, torch.bfloat16).eval()
                row.update(bench_encoder(dev, encoder, batch, p['img'], p['seconds']), status='ok')
            except Exception as e:  # noqa: BLE001
                row['status'] = 'OOM' if is_oom(e) else 'error'
                if not is_oom(e):
                    report.error('bench_sam', item, e)
                encoder = None
                dev.release()
            rows.append(row)
            print(f"[bench_sam] {item}: {fmt(row.get('images_per_s'))} img/s, peak {fmt(row.get('peak_GiB'))} GiB "
                  f"[{row['status']}]", flush=True)
        del encoder
        dev.release()
        report.rows('bench_sam').extend(rows)
        add_vit_b_ratios(report.rows('bench_sam'))
        report.save()


def add_vit_b_ratios(rows: List[Dict]) -> None:
    """images/s of every row over segment-anything ViT-B's at the same batch (when measured)."""
    for row in rows:
        vit_b = next((r for r in rows if r['model'] == SAM_VIT_B and r['batch'] == row['batch']
                      and r.get('images_per_s')), None)
        if vit_b and row.get('images_per_s'):
            row['speed_vs_vit_b'] = row['images_per_s'] / vit_b['images_per_s']


def bench_encoder(dev: Device, encoder: torch.nn.Module, batch: int, size: int, seconds: float) -> Dict:
    """ms, images/s and peak allocated memory of a bf16 encoder on a (batch, 3, size, size) bf16 input."""
    x = torch.randn(batch, 3, size, size, device=dev.device, dtype=torch.bfloat16)

    def forward():
        with torch.inference_mode():
            encoder(x)

    dev.reset_peak()
    ms = measure_ms(forward, dev, seconds, max_calls=50)
    return dict(params_M=sum(q.numel() for q in encoder.parameters()) / 1e6, ms=ms,
                images_per_s=batch / ms * 1e3, peak_GiB=dev.peak_gib())


# ---- main ---------------------------------------------------------------------------------------
SECTION_FUNCTIONS = dict(kernels=section_kernels, model_check=section_model_check, bench_ops=section_bench_ops,
                         bench_models=section_bench_models, bench_sam=section_bench_sam,
                         multi_device=section_multi_device)


def machine_info(seed: int) -> Dict:
    cuda = torch.cuda.is_available()
    props = torch.cuda.get_device_properties(0) if cuda else None
    return dict(date=datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC'),
                gpu=props.name if props else 'no CUDA device (CPU, Triton interpreter)',
                gpu_memory_GiB=props.total_memory / 2 ** 30 if props else None,
                capability='.'.join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
                gpu_count=torch.cuda.device_count() if cuda else 0, torch=torch.__version__, cuda=torch.version.cuda,
                triton=triton.__version__, timm=timm.__version__, python=platform.python_version(),
                platform=platform.platform(), cpu_threads=torch.get_num_threads(),
                triton_interpret=os.environ.get('TRITON_INTERPRET', ''), seed=seed)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='gpu_check_results', help='output folder (gpu_check.json, gpu_check.md)')
    size = parser.add_mutually_exclusive_group()
    size.add_argument('--quick', action='store_true', help='about 2 minutes: fewer shapes and sizes')
    size.add_argument('--smoke', action='store_true', help='tiny shapes and models (automatic without CUDA)')
    parser.add_argument('--sections', default=','.join(SECTIONS), help=f'comma-separated, from {",".join(SECTIONS)}')
    parser.add_argument('--seed', type=int, default=None, help='random seed (default: a fresh one, printed)')
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    args.sections = [s for s in args.sections.split(',') if s]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f'unknown sections {unknown}; choose from {",".join(SECTIONS)}')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    mode = 'smoke' if args.smoke or not cuda else 'quick' if args.quick else 'full'
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2 ** 31)
    torch.manual_seed(seed)
    plan = PLANS[mode]
    if plan['hard_limit']:
        faulthandler.dump_traceback_later(plan['hard_limit'], exit=True)
    report = Report(Path(args.out), machine_info(seed), mode)
    ctx = Context(Device('cuda' if cuda else 'cpu'), mode, report)
    print(report.markdown(details=False).split('\n## ')[0], flush=True)
    if mode == 'smoke' and not args.smoke:
        print('no CUDA device: smoke mode (tiny shapes; Triton interpreter on CPU)\n', flush=True)
    start = time.monotonic()
    carry = 0.
    for name in SECTIONS:
        if name not in args.sections:
            continue
        budget = max(0., min(plan['budgets'][name] + carry, plan['total'] - (time.monotonic() - start)))
        ctx.budget = Budget(budget)
        report.data[name].update(status='running', budget_s=budget)
        try:
            SECTION_FUNCTIONS[name](ctx)
        except Exception as e:  # noqa: BLE001  (a section that breaks must not stop the others)
            report.error(name, 'section', e)
            ctx.dev.release()
        report.data[name].update(status='done', seconds=budget - ctx.budget.left())
        carry = max(0., ctx.budget.left())
        report.save()
    faulthandler.cancel_dump_traceback_later()
    report.data['seconds'] = time.monotonic() - start
    report.save()
    print('\n## ' + report.markdown(details=False).split('\n## ', 1)[1])
    print(f'wrote {report.out_dir / "gpu_check.json"} and {report.out_dir / "gpu_check.md"}')
    return int(report.failures() > 0)


if __name__ == '__main__':
    run_tool(main)
