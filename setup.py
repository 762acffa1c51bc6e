"""vision_rwkv: RWKV vision backbones (Vision-RWKV, RWKV-SAM) with Triton Bi-WKV kernels.

``kernels/`` is installed as ``vision_rwkv.kernels``; there is no top-level ``kernels`` package.
"""
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
version = {}
exec((ROOT / 'vision_rwkv' / 'version.py').read_text(), version)

# One exact torch: torchvision, triton and the source-built mmcv (extra 'seg') are tied to it.
TORCH = 'torch==2.13.0'
TORCHVISION = 'torchvision==0.28.0'

setup(
    name='vision_rwkv',
    version=version['__version__'],
    description='RWKV vision backbones with Triton bidirectional WKV kernels, for timm, mmengine and mmsegmentation',
    long_description=(ROOT / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=['vision_rwkv', 'vision_rwkv.data', 'vision_rwkv.engine', 'vision_rwkv.layers', 'vision_rwkv.models',
              'vision_rwkv.mmseg', 'vision_rwkv.sam', 'vision_rwkv.sam.modeling', 'vision_rwkv.sam.utils',
              'vision_rwkv.kernels', 'vision_rwkv.deploy', 'vision_rwkv_runtime'],
    package_dir={'vision_rwkv.kernels': 'kernels'},
    package_data={'vision_rwkv_runtime': ['static/*.html']},  # the page of tools/sam_app.py
    install_requires=[
        TORCH,
        TORCHVISION,
        'triton>=3.2',
        'timm>=1.0.15,<1.1',
        'numpy',
        'pillow',
        'matplotlib',
        # the training tools (tools/train.py, tools/test.py) run on mmengine's Runner
        'mmengine==0.10.7',
    ],
    extras_require={
        # scikit-image: sample photos for demo tests; playwright drives Debian's Chromium (/usr/bin/chromium, which
        # tools/setup_env.sh installs with apt-get) in tests/test_sam_app.py: never `playwright install`
        'dev': ['pytest>=8', 'pytest-timeout', 'scikit-image', 'playwright'],
        # tools/sam_app.py: its server is the standard library's; scikit-image gives its sample photos
        'app': ['pillow', 'scikit-image'],
        # mmcv 2.1.0 has no wheel for this torch: tools/setup_env.sh builds it from source first.
        # mmsegmentation 1.2.2 imports ftfy and regex without declaring them.
        'seg': ['mmsegmentation==1.2.2', 'mmcv==2.1.0', 'ftfy', 'regex'],
        # RWKV-SAM: segment-anything's own predictor / mask generator work with our model (tested);
        # pycocotools for COCO-format masks and RLE outputs
        'sam': ['segment-anything==1.0', 'pycocotools', 'scipy'],
        # ONNX export (torch's torch.export-based exporter needs onnxscript) and the check in onnxruntime
        'deploy': ['onnx>=1.17', 'onnxscript>=0.5', 'onnxruntime>=1.20'],
    },
)
