"""Embedded ADE20K-layout segmentation set: layout, determinism, label values, boundaries, CLI, mmseg."""
import filecmp
import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vision_rwkv.data import SEG_TOY_CLASSES, SHAPE_CLASSES, make_segmentation_set, segmentation_sample
from vision_rwkv.data.generate import META_FILE, classification_image
from vision_rwkv.data.segmentation import BACKGROUND_CONTRAST, SEG_CLASSES

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(image_size=32, train_images=4, val_images=3, max_shapes=3)
BACKGROUND_IDS = {c.ade_id for c in SEG_CLASSES[:3]}
OBJECT_IDS = {c.ade_id for c in SEG_CLASSES[3:]}
# sha256 of classification_image(seed, split, label, index, SHAPE_CLASSES[:6], size).tobytes(), measured
# before shapes.py learned to draw a given background kind: the classification set must not change.
CLASSIFICATION_SHA256 = {
    (0, 'train', 0, 0, 32): 'db1a57a5c599cca2e2b28feae25cebc6b516b6c3765aaf578c6120edd5fa0508',
    (7, 'val', 3, 2, 24): '19688d82b563a04a642bdab42af481d46e4609794062b88d619ab7aec356a6e6',
    (1, 'train', 5, 11, 40): '283916064db9daf36e6c55f2ddaa7ff46d2504d2924d74b8100f6f22f9e4094d',
}


def _pairs(root: Path, folder: str) -> list[tuple[Path, Path]]:
    images = sorted((root / 'images' / folder).iterdir())
    return [(p, root / 'annotations' / folder / f'{p.stem}.png') for p in images]


def _read_label(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == 'L' and img.format == 'PNG'
        return np.asarray(img)


def test_classification_images_are_unchanged():
    for (seed, split, label, index, size), digest in CLASSIFICATION_SHA256.items():
        image = classification_image(seed, split, label, index, SHAPE_CLASSES[:6], size)
        assert hashlib.sha256(image.tobytes()).hexdigest() == digest


def test_classes_are_ade20k_names_in_stuff_then_things_order():
    assert SEG_TOY_CLASSES == ('sky', 'wall', 'floor', 'ball', 'box', 'signboard', 'flag', 'plate')
    assert [c.ade_id for c in SEG_CLASSES] == [3, 1, 4, 120, 42, 44, 150, 143]


def test_layout_pairs_every_image_with_its_label_map(tmp_path):
    root = make_segmentation_set(tmp_path / 'ade', **SMALL)
    for folder, split, count in (('training', 'train', 4), ('validation', 'val', 3)):
        pairs = _pairs(root, folder)
        assert [p.name for p, _ in pairs] == [f'toy_{split}_{i:05d}.jpg' for i in range(count)]
        assert sorted(p.name for p in (root / 'annotations' / folder).iterdir()) == [a.name for _, a in pairs]
        for image_path, label_path in pairs:
            with Image.open(image_path) as img:
                assert img.format == 'JPEG' and img.mode == 'RGB' and img.size == (32, 32)
            assert _read_label(label_path).shape == (32, 32)
        index = int(pairs[-1][0].stem[-5:])
        assert np.array_equal(_read_label(pairs[-1][1]), segmentation_sample(0, split, index, 32, 3)[1])
    meta = json.loads((root / META_FILE).read_text())
    assert meta == dict(SMALL, kind='segmentation', classes=list(SEG_TOY_CLASSES), seed=0,
                        background_contrast=BACKGROUND_CONTRAST)


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    seed = random.randrange(2 ** 16)
    a = make_segmentation_set(tmp_path / 'a', seed=seed, **SMALL)
    b = make_segmentation_set(tmp_path / 'b', seed=seed, **SMALL)
    c = make_segmentation_set(tmp_path / 'c', seed=seed + 1, **SMALL)
    files = sorted(str(p.relative_to(a)) for p in a.rglob('*') if p.suffix in ('.jpg', '.png'))
    assert len(files) == 2 * (4 + 3)
    match, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert len(match) == len(files) and not mismatch and not errors
    assert filecmp.cmpfiles(a, c, files, shallow=False)[1], 'another seed must change the files'


def test_label_values_background_objects_and_boundary_band():
    seed = random.randrange(2 ** 16)
    for index in range(40):
        _, label = segmentation_sample(seed, 'train', index, image_size=32, max_shapes=3)
        values = set(np.unique(label).tolist())
        assert values <= {0} | BACKGROUND_IDS | OBJECT_IDS
        assert len(values & BACKGROUND_IDS) == 1, 'one background texture per image'
        assert values & OBJECT_IDS, 'at least one object survives the boundary band'
        assert 0 in values
        for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
            assert not np.any((a != b) & (a != 0) & (b != 0)), 'labelled neighbours never differ'


def test_label_map_agrees_with_the_image(tmp_path):
    root = make_segmentation_set(tmp_path / 'one', image_size=48, train_images=1, val_images=8, max_shapes=1)
    for image_path, label_path in _pairs(root, 'validation'):
        image = np.asarray(Image.open(image_path), dtype=np.float64)
        label = _read_label(label_path)
        objects, background = np.isin(label, list(OBJECT_IDS)), np.isin(label, list(BACKGROUND_IDS))
        distance = np.linalg.norm(image[objects].mean(axis=0) - image[background].mean(axis=0))
        assert distance > 60, f'{image_path.name}: object colour too close to the background ({distance:.0f})'


def test_reuses_matching_root_and_rejects_other_parameters(tmp_path):
    root = make_segmentation_set(tmp_path / 'd', **SMALL)
    stamp = (root / META_FILE).stat().st_mtime_ns
    assert make_segmentation_set(tmp_path / 'd', **SMALL) == root
    assert (root / META_FILE).stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match='other parameters'):
        make_segmentation_set(tmp_path / 'd', **dict(SMALL, max_shapes=2))


@pytest.mark.parametrize('bad', [dict(image_size=16), dict(image_size=32.0), dict(train_images=0),
                                 dict(val_images=-1), dict(max_shapes=0), dict(seed=-1), dict(max_shapes=True)])
def test_bad_arguments_raise_value_error(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_segmentation_set(tmp_path / 'bad', **dict(SMALL, **bad))
    assert not (tmp_path / 'bad').exists()


def _start_make_data(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / 'tools' / 'make_data.py'), 'segmentation', *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_writes_the_set_and_rejects_bad_arguments(tmp_path):
    out = tmp_path / 'cli'
    # both runs at once: each process spends seconds importing torch through vision_rwkv
    good = _start_make_data('--out', str(out), '--image-size', '32', '--train-images', '2', '--val-images', '1')
    bad = _start_make_data('--out', str(tmp_path / 'bad'), '--max-shapes', '0')
    (stdout, stderr), (_, bad_stderr) = good.communicate(timeout=60), bad.communicate(timeout=60)
    assert good.returncode == 0, stderr
    assert 'ADE20K layout' in stdout
    assert len(_pairs(out, 'training')) == 2 and len(_pairs(out, 'validation')) == 1
    assert json.loads((out / META_FILE).read_text())['max_shapes'] == 3
    assert bad.returncode == 2
    assert bad_stderr.startswith('error: max_shapes') and bad_stderr.count('\n') == 1
    assert not (tmp_path / 'bad').exists()


def test_loads_with_mmseg_ade20k_dataset(tmp_path):
    from mmseg.datasets import ADE20KDataset
    from mmseg.utils import register_all_modules

    register_all_modules()
    for c in SEG_CLASSES:
        assert ADE20KDataset.METAINFO['classes'][c.ade_id - 1] == c.name
    root = make_segmentation_set(tmp_path / 'ade', **SMALL)
    dataset = ADE20KDataset(data_root=str(root),
                            data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
                            metainfo=dict(classes=SEG_TOY_CLASSES),
                            pipeline=[dict(type='LoadImageFromFile'),
                                      dict(type='LoadAnnotations', reduce_zero_label=True)])
    assert len(dataset) == 3
    assert tuple(dataset.metainfo['classes']) == SEG_TOY_CLASSES
    for i in range(len(dataset)):
        item = dataset[i]
        gt = item['gt_seg_map']
        stored = _read_label(Path(item['seg_map_path']))
        assert gt.shape == stored.shape == (32, 32)
        assert set(np.unique(gt).tolist()) <= set(range(8)) | {255}
        assert np.array_equal(gt == 255, stored == 0)
        for toy_id, c in enumerate(SEG_CLASSES):
            assert np.array_equal(gt == toy_id, stored == c.ade_id)
