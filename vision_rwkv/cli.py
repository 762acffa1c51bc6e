"""How every tool in ``tools/`` ends: ``run_tool`` and ``add_debug_flag``, from the torch-free
``vision_rwkv_runtime.cli`` (the ONNX demo runs without torch)."""
from vision_rwkv_runtime.cli import add_debug_flag, run_tool

__all__ = ['add_debug_flag', 'run_tool']
