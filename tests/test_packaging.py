"""The kernels are importable as vision_rwkv.kernels only (no top-level 'kernels' package)."""
import subprocess
import sys


def test_kernels_import_path(tmp_path):
    code = (
        'import importlib.util, vision_rwkv.kernels as k\n'
        'assert callable(k.bi_wkv) and callable(k.bi_wkv_reference)\n'
        'assert importlib.util.find_spec("kernels") is None, "top-level kernels package is installed"\n'
    )
    result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
