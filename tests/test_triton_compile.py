"""The Triton kernels compile for a Hopper GPU (sm_90) without spilling registers, on a machine
with no GPU: ``tools/triton_compile_check.py`` lowers them with Triton and assembles them with the
ptxas that Triton's wheel ships."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env['TRITON_CACHE_DIR'] = str(tmp_path / 'cache')  # compile for real, not from a cache
    out = tmp_path / 'compile.json'
    proc = subprocess.run([sys.executable, str(ROOT / 'tools' / 'triton_compile_check.py'), '--arch', '90',
                           '--json', str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())['kernels']
    assert len(rows) >= 6
    for row in rows:
        assert row['ok'] and row['spill_bytes'] == 0 and row['registers'] <= 255, row
