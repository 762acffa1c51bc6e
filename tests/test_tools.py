"""tools/train.py and tools/test.py end to end, in subprocesses, on a tiny generated data set.

Covers: training with a corrupt image in the data, checkpoints (weights_only), curves PNG, ETA in
the progress line, test.py agreeing with training's validation, resume after SIGKILL mid-epoch,
2-process DDP on CPU (gloo), and clear one-line errors for bad input.
"""
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from vision_rwkv.data import make_classification_set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN, TEST = os.path.join(REPO, 'tools', 'train.py'), os.path.join(REPO, 'tools', 'test.py')
TRAIN_PER_CLASS, CLASSES, BATCH, EPOCHS = 16, 3, 8, 3
ITERS_PER_EPOCH = TRAIN_PER_CLASS * CLASSES // BATCH

CRASH_HOOK = '''
import os
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class CrashHook(Hook):
    """Kills the process (SIGKILL, no cleanup) in the middle of the second epoch."""

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.epoch == 1 and batch_idx == 2:
            os.kill(os.getpid(), signal.SIGKILL)
'''


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = make_classification_set(tmp_path_factory.mktemp('data') / 'shapes',
                                   classes=('circle', 'square', 'star'), train_per_class=TRAIN_PER_CLASS,
                                   val_per_class=4, image_size=32, seed=random.randrange(2 ** 16))
    victim = sorted((root / 'train' / 'star').iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated JPEG
    return root


def write_config(folder, data_root, name='tiny.py', extra_hooks=(), extra_imports=()):
    hooks = ["dict(type='PortableCheckpointHook')", "dict(type='ClassNumCheckHook')",
             "dict(type='TrainingCurvesHook')", "dict(type='EMAHook', momentum=0.05)", *extra_hooks]
    text = f'''
        _base_ = ['{REPO}/configs/classification/vrwkv_toy_shapes.py']
        custom_imports = dict(imports=['vision_rwkv.engine', {", ".join(repr(m) for m in extra_imports)}],
                              allow_failed_imports=False)
        model = dict(num_classes={CLASSES}, model_kwargs=dict(embed_dim=32, depth=2))
        _data = dict(data_root='{data_root}', generate=None)
        train_dataloader = dict(batch_size={BATCH}, num_workers=0, persistent_workers=False, dataset=_data)
        val_dataloader = dict(batch_size=6, num_workers=0, persistent_workers=False, dataset=_data)
        test_dataloader = val_dataloader
        train_cfg = dict(max_epochs={EPOCHS})
        param_scheduler = [dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0,
                                end={EPOCHS}, convert_to_iter_based=True)]
        custom_hooks = [{", ".join(hooks)}]
        default_hooks = dict(logger=dict(interval=2))
    '''
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def run(args, cwd, env=None, timeout=600):
    env = {**os.environ, 'PYTHONPATH': str(cwd), **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


@pytest.mark.slow
def test_train_then_test(tmp_path, data_root):
    cfg = write_config(tmp_path, data_root)
    work = tmp_path / 'work'
    result = run([TRAIN, cfg, '--work-dir', str(work)], tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert 'eta:' in log and f'Epoch(train) [{EPOCHS}][{ITERS_PER_EPOCH}/{ITERS_PER_EPOCH}]' in log
    assert 'skipping corrupt image' in log and 'star_00003.jpg' in log
    ckpt = load(work / f'epoch_{EPOCHS}.pth')
    assert ckpt['meta']['epoch'] == EPOCHS and ckpt['meta']['iter'] == EPOCHS * ITERS_PER_EPOCH
    assert (work / 'last_checkpoint').read_text().strip().endswith(f'epoch_{EPOCHS}.pth')
    assert (work / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    summary = json.loads((work / 'summary.json').read_text())
    assert summary['iter'] == EPOCHS * ITERS_PER_EPOCH and 'accuracy/top1' in summary['val']
    assert not list(work.glob('*.tmp')) and not list(work.glob('.*.tmp'))

    out = tmp_path / 'metrics.json'
    result = run([TEST, cfg, str(work / f'epoch_{EPOCHS}.pth'), '--work-dir', str(tmp_path / 'test'),
                  '--out', str(out)], tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    metrics = json.loads(out.read_text())
    assert metrics['accuracy/top1'] == pytest.approx(summary['val']['accuracy/top1'])


@pytest.mark.slow
def test_resume_after_kill_mid_epoch(tmp_path, data_root):
    (tmp_path / 'crash_hook.py').write_text(CRASH_HOOK)
    crashing = write_config(tmp_path, data_root, 'crashing.py', ["dict(type='CrashHook')"], ['crash_hook'])
    cfg = write_config(tmp_path, data_root)
    work = tmp_path / 'work'
    result = run([TRAIN, crashing, '--work-dir', str(work)], tmp_path)
    assert result.returncode == -9, (result.stdout + result.stderr)[-3000:]
    assert (work / 'epoch_1.pth').exists() and not (work / 'epoch_2.pth').exists()
    assert (work / 'last_checkpoint').read_text().strip().endswith('epoch_1.pth')

    result = run([TRAIN, cfg, '--work-dir', str(work), '--resume'], tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert f'resumed epoch: 1, iter: {ITERS_PER_EPOCH}' in log
    assert 'Epoch(train) [1][' not in log and f'Epoch(train) [2][{ITERS_PER_EPOCH}/' in log
    ckpt = load(work / f'epoch_{EPOCHS}.pth')
    assert ckpt['meta']['iter'] == EPOCHS * ITERS_PER_EPOCH
    # the loss history spans the whole run: the first epoch from the checkpoint, the rest after resuming
    assert len(ckpt['message_hub']['log_scalars']['train/loss']['log_history']) == EPOCHS * ITERS_PER_EPOCH


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU (gloo) path of the PyTorch launcher')
def test_ddp_two_cpu_processes(tmp_path, data_root):
    cfg = write_config(tmp_path, data_root)
    work = tmp_path / 'work'
    result = run(['-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={_free_port()}',
                  TRAIN, cfg, '--launcher', 'pytorch', '--work-dir', str(work),
                  '--cfg-options', 'train_cfg.max_epochs=2'], tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    per_rank = ITERS_PER_EPOCH // 2  # the sampler splits the data set between the two processes
    assert f'Epoch(train) [2][2/{per_rank}]' in log
    assert load(work / 'epoch_2.pth')['meta']['iter'] == 2 * per_rank
    assert 'Distributed training: True' in log


BAD_INPUT = {
    'unknown model': (['--cfg-options', 'model.model_name=vrwkv_tiy_patch16_224'],
                      "unknown timm model 'vrwkv_tiy_patch16_224'. Did you mean: vrwkv_tiny_patch16_224"),
    'unknown key': (['--cfg-options', 'train_cfg.max_epoch=2'],
                    "unknown config key 'train_cfg.max_epoch'"),
    'class count': (['--cfg-options', 'model.num_classes=4'],
                    'the model has num_classes=4 but the train set'),
    'missing config': (None, 'config file'),
    'text for a number': (['--cfg-options', 'model.num_classes=abc'],
                          "--cfg-options model.num_classes='abc': expected a number"),
}


@pytest.mark.slow
@pytest.mark.parametrize('case', BAD_INPUT, ids=list(BAD_INPUT))
def test_bad_input_is_one_clear_line(tmp_path, data_root, case):
    args, message = BAD_INPUT[case]
    cfg = write_config(tmp_path, data_root) if args is not None else str(tmp_path / 'nope.py')
    result = run([TRAIN, cfg, '--work-dir', str(tmp_path / 'work'), *(args or [])], tmp_path)
    assert result.returncode == 2, (result.stdout + result.stderr)[-3000:]
    assert message in result.stderr and 'Traceback' not in result.stderr
    assert not list((tmp_path / 'work').glob('*.pth'))


@pytest.mark.slow
def test_empty_class_folder_fails_before_training(tmp_path, data_root):
    root = tmp_path / 'shapes'
    shutil.copytree(data_root, root)
    (root / 'train' / 'triangle').mkdir()
    cfg = write_config(tmp_path, root)
    result = run([TRAIN, cfg, '--work-dir', str(tmp_path / 'work')], tmp_path)
    assert result.returncode == 2
    assert 'empty class folder' in result.stderr and str(root / 'train' / 'triangle') in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason='--amp is accepted on CUDA machines')
def test_amp_without_cuda_is_refused(tmp_path, data_root):
    result = run([TRAIN, write_config(tmp_path, data_root), '--amp'], tmp_path)
    assert result.returncode == 2 and '--amp needs a CUDA device' in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize('content,message', [(b'', 'is empty'), (b'\x01' + os.urandom(4095), 'is not a PyTorch checkpoint')],
                         ids=['empty', 'random bytes'])
def test_test_tool_names_a_file_that_is_no_checkpoint(tmp_path, data_root, content, message):
    """tools/test.py with a file that is not a checkpoint: one line naming the file, before anything is built
    (a checkpoint starts with a zip or pickle header; these bytes start with neither)."""
    bogus = tmp_path / 'bogus.pth'
    bogus.write_bytes(content)
    result = run([TEST, write_config(tmp_path, data_root), str(bogus)], tmp_path)
    assert result.returncode == 2, (result.stdout + result.stderr)[-3000:]
    assert message in result.stderr and str(bogus) in result.stderr and 'Traceback' not in result.stderr
