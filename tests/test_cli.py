"""The tools' error convention (``vision_rwkv.cli.run_tool``), checkpoint file errors and file modes."""
import ast
import glob
import os
import stat
import subprocess
import sys

import pytest
import torch

from vision_rwkv.cli import run_tool
from vision_rwkv.engine import extras
from vision_rwkv.engine.checkpoint import atomic_write
from vision_rwkv.errors import CheckpointError, ConfigError, InputFileError, UserError
from vision_rwkv.checkpoint import load_checkpoint_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(main, argv=('tool.py',), monkeypatch=None):
    """``run_tool(main)`` with ``sys.argv = argv``; returns the exit code."""
    monkeypatch.setattr(sys, 'argv', list(argv))
    with pytest.raises(SystemExit) as info:
        run_tool(main)
    return info.value.code


def config_error():
    raise ConfigError('model.depth must be positive')


def test_user_error_is_one_line_with_exit_code_2(monkeypatch, capsys):
    assert run(config_error, monkeypatch=monkeypatch) == 2
    assert capsys.readouterr().err == 'error: model.depth must be positive\n'


def test_internal_error_keeps_its_traceback(monkeypatch):
    """Any other exception propagates (Python prints its traceback, exit code 1), FileNotFoundError from
    inside the code included: only InputFileError is the user's."""
    monkeypatch.setattr(sys, 'argv', ['tool.py'])
    with pytest.raises(FileNotFoundError):
        run_tool(lambda: open('/nonexistent/internal/file'))


def test_debug_shows_the_traceback_of_user_errors(monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['tool.py', '--debug'])
    with pytest.raises(ConfigError, match='model.depth must be positive'):
        run_tool(config_error)


def test_main_return_value_is_the_exit_code(monkeypatch):
    assert run(lambda: 3, monkeypatch=monkeypatch) == 3
    assert run(lambda: None, monkeypatch=monkeypatch) == 0


def test_a_real_tool_reports_a_user_error_in_one_line(tmp_path):
    """End to end through a tool's process: make_data with a bad class list."""
    result = subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'make_data.py'), 'classification',
                             '--out', str(tmp_path / 'set'), '--classes', 'circle,circle'],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2 and result.stderr.startswith('error: classes must be')
    assert 'Traceback' not in result.stderr


#: the scripts of tools/ (the others there are modules they import, with no ``__main__`` block)
TOOL_SCRIPTS = sorted(os.path.basename(t) for t in glob.glob(os.path.join(REPO, 'tools', '*.py'))
                      if "if __name__ == '__main__':" in open(t).read())


def _called_names(tree: ast.AST):
    return {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}


def test_the_tool_scripts_are_found():
    assert len(TOOL_SCRIPTS) >= 11 and {'train.py', 'gpu_check.py', 'benchmark_ops.py'} <= set(TOOL_SCRIPTS)


@pytest.mark.parametrize('tool', TOOL_SCRIPTS)
def test_every_tool_runs_under_the_error_convention(tool):
    """Every script of tools/ ends in ``run_tool(main)`` and declares ``--debug`` (directly or through
    ``add_common_args``)."""
    tree = ast.parse(open(os.path.join(REPO, 'tools', tool)).read())
    main_block = tree.body[-1]
    assert isinstance(main_block, ast.If) and ast.unparse(main_block.test) == "__name__ == '__main__'", tool
    assert [ast.unparse(s) for s in main_block.body] == ['run_tool(main)'], tool
    assert _called_names(tree) & {'add_debug_flag', 'add_common_args'}, f'{tool} does not declare --debug'


class _Pickled:
    """A Python object: pickled into a checkpoint it needs code to load (refused by weights_only=True)."""


def _save(path, obj, **kwargs):
    torch.save(obj, path, **kwargs)
    return path


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _truncated(path, **save_kwargs):
    """A checkpoint cut after 700 bytes (zip: no central directory; legacy pickle: data missing)."""
    return _write(path, _save(path, dict(w=torch.randn(1000)), **save_kwargs).read_bytes()[:700])


CHECKPOINT_FAULTS = {
    'missing': (lambda p: p, InputFileError, 'does not exist'),
    'empty': (lambda p: _write(p, b''), CheckpointError, 'is empty'),
    'text': (lambda p: _write(p, b'not a checkpoint\n'), CheckpointError, 'is not a PyTorch checkpoint'),
    'truncated zip': (_truncated, CheckpointError, 'is truncated or corrupt'),
    'truncated legacy': (lambda p: _truncated(p, _use_new_zipfile_serialization=False), CheckpointError,
                         'is truncated or corrupt'),
    'pickled object': (lambda p: _save(p, dict(obj=_Pickled())), CheckpointError,
                       r'holds Python objects that weights_only=True refuses to load \(GLOBAL .*_Pickled\)'),
}


@pytest.mark.parametrize('fault', CHECKPOINT_FAULTS, ids=list(CHECKPOINT_FAULTS))
def test_checkpoint_errors_name_the_file_and_the_cause(tmp_path, fault):
    make, error, message = CHECKPOINT_FAULTS[fault]
    path = make(tmp_path / 'weights.pth')
    with pytest.raises(error, match=message) as info:
        load_checkpoint_file(str(path))
    assert str(path) in str(info.value) and isinstance(info.value, UserError)
    assert info.value.__cause__ is None  # torch's traceback is not chained to it
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_checkpoint_errors_keep_the_builtin_types():
    """Library callers that catch FileNotFoundError / RuntimeError keep working."""
    assert issubclass(InputFileError, FileNotFoundError) and issubclass(CheckpointError, RuntimeError)


def test_checkpoint_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(b'weights', tmp_path / 'a.pth')
        os.umask(0o077)
        atomic_write(b'weights', tmp_path / 'b.pth')
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / 'a.pth').st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / 'b.pth').st_mode) == 0o600


@pytest.fixture
def config_module_needing_a_package(tmp_path, monkeypatch):
    """A config module ``cfgmod_<n>`` that imports a package ``extrapkg_<n>`` which is not installed,
    registered as an optional part of the install."""
    name = f'{os.getpid()}_{tmp_path.name}'.replace('-', '_')
    module, package = f'cfgmod_{name}', f'extrapkg_{name}'
    (tmp_path / f'{module}.py').write_text(f'import {package}\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(extras.EXTRAS, module, ('seg', (package,), 'a package: seconds'))
    return module, package, tmp_path


def test_missing_optional_part_outside_the_venv_names_the_command(config_module_needing_a_package, monkeypatch):
    module, _, _ = config_module_needing_a_package
    monkeypatch.setattr(extras, '_in_project_venv', lambda: False)
    with pytest.raises(ConfigError, match=r'run `bash tools/setup_env.sh seg`.*\(a package: seconds\)'):
        extras.import_config_modules([module])


def test_missing_optional_part_is_set_up_on_first_use(config_module_needing_a_package, monkeypatch, capsys):
    """In the project's venv the part is installed (here: the setup script is replaced by writing the
    package) with one line saying so, then the config's module imports."""
    module, package, folder = config_module_needing_a_package
    monkeypatch.setattr(extras, '_in_project_venv', lambda: True)
    calls = []

    def fake_setup(cmd, cwd):
        calls.append(cmd)
        (folder / f'{package}.py').write_text('')
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(extras.subprocess, 'run', fake_setup)
    extras.import_config_modules([module])
    assert calls == [['bash', extras.SETUP, 'seg']] and module in sys.modules
    assert capsys.readouterr().out == f'first use of {module}: installing a package: seconds (`bash tools/setup_env.sh seg`)\n'


def test_other_import_errors_are_not_taken_for_a_missing_part(tmp_path, monkeypatch):
    (tmp_path / 'cfgmod_broken.py').write_text('raise ImportError("a bug in the module")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(extras.EXTRAS, 'cfgmod_broken', ('seg', ('mmseg',), 'x'))
    with pytest.raises(ImportError, match='a bug in the module'):
        extras.import_config_modules(['cfgmod_broken'])
    with pytest.warns(UserWarning, match='cfgmod_broken failed to import'):
        extras.import_config_modules(['cfgmod_broken'], allow_failed=True)
