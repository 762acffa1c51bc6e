"""The kernels are importable as vision_rwkv.kernels only (no top-level 'kernels' package); every package is
installed; the runtime package works without torch."""
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


def test_setup_lists_every_subpackage():
    """A regular (non-editable) install ships every package directory of vision_rwkv and vision_rwkv_runtime."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    setup = (root / 'setup.py').read_text()
    for init in [*(root / 'vision_rwkv').rglob('__init__.py'), *(root / 'vision_rwkv_runtime').rglob('__init__.py')]:
        name = '.'.join(init.parent.relative_to(root).parts)
        assert f"'{name}'" in setup, f'{name} is missing from setup.py packages'


def test_runtime_imports_without_torch(tmp_path):
    """vision_rwkv_runtime (the onnxruntime side of deployment) imports every module with ``import torch`` failing."""
    code = ('import pkgutil, sys\n'
            'sys.modules["torch"] = None\n'
            'import vision_rwkv_runtime\n'
            'names = [m.name for m in pkgutil.iter_modules(vision_rwkv_runtime.__path__)]\n'
            'assert {"cli", "errors", "files", "image", "onnx", "sam"} <= set(names), names\n'
            'for name in names:\n'
            '    __import__(f"vision_rwkv_runtime.{name}")\n')
    result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
