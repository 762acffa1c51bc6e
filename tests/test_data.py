"""Embedded data generator and the ImageFolder data set: determinism, layout, bad input."""
import filecmp
import json
import logging
import random

import numpy as np
import pytest
from PIL import Image

from vision_rwkv.data import SHAPE_CLASSES, ImageFolderDataset, make_classification_set, render_scene
from vision_rwkv.data import generate as generate_mod
from vision_rwkv.data.image_folder import CorruptImageError, DatasetError

SMALL = dict(classes=('circle', 'star', 'ring'), train_per_class=3, val_per_class=2, image_size=24)


def test_render_scene_masks_and_occlusion():
    rng = np.random.default_rng(random.randrange(2 ** 31))
    labels = list(rng.integers(0, len(SHAPE_CLASSES), size=4))
    image, instances = render_scene(rng, (40, 56), SHAPE_CLASSES, labels)
    assert image.shape == (40, 56, 3) and image.dtype == np.uint8
    assert 1 <= len(instances) <= 4
    assert all(i.mask.dtype == bool and i.mask.shape == (40, 56) and i.mask.any() for i in instances)
    overlap = sum(i.mask.astype(int) for i in instances)
    assert overlap.max() == 1, 'visible masks of a scene must not overlap'
    remaining = iter(labels)
    assert all(any(i.label == lb for lb in remaining) for i in instances), 'instances keep drawing order'


def test_generator_is_deterministic_and_uses_imagefolder_layout(tmp_path):
    seed = random.randrange(2 ** 16)
    a = make_classification_set(tmp_path / 'a', seed=seed, **SMALL)
    b = make_classification_set(tmp_path / 'b', seed=seed, **SMALL)
    c = make_classification_set(tmp_path / 'c', seed=seed + 1, **SMALL)
    files = sorted(p.relative_to(a) for p in a.rglob('*.jpg'))
    assert len(files) == 3 * (3 + 2)
    assert {f.parts[0] for f in files} == {'train', 'val'}
    assert {f.parts[1] for f in files} == set(SMALL['classes'])
    match, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors
    assert filecmp.cmpfiles(a, c, [str(f) for f in files], shallow=False)[1], 'another seed must change images'
    with Image.open(a / files[0]) as img:
        assert img.format == 'JPEG' and img.size == (24, 24) and img.mode == 'RGB'
    assert json.loads((a / 'generator.json').read_text())['seed'] == seed


def test_generator_reuses_matching_root_and_rejects_other_parameters(tmp_path):
    root = make_classification_set(tmp_path / 'd', **SMALL)
    stamp = (root / 'generator.json').stat().st_mtime_ns
    assert make_classification_set(tmp_path / 'd', **SMALL) == root
    assert (root / 'generator.json').stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match='other parameters'):
        make_classification_set(tmp_path / 'd', **dict(SMALL, image_size=32))
    (tmp_path / 'mine').mkdir()
    with pytest.raises(FileExistsError, match='not written by the generator'):
        make_classification_set(tmp_path / 'mine', **SMALL)
    with pytest.raises(ValueError, match='distinct names'):
        make_classification_set(tmp_path / 'e', classes=('circle', 'hexagon'))


def test_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []
    original = generate_mod.classification_image

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(generate_mod, 'classification_image', failing)
    with pytest.raises(KeyboardInterrupt):
        make_classification_set(tmp_path / 'x', **SMALL)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def folder(tmp_path):
    root = make_classification_set(tmp_path / 'set', **SMALL)
    return root / 'train'


def test_image_folder_labels_follow_sorted_class_folders(folder):
    ds = ImageFolderDataset(folder)
    assert ds.classes == ('circle', 'ring', 'star')
    assert len(ds) == 9
    labels = [ds[i]['labels'] for i in range(len(ds))]
    assert labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds[0]['inputs'].size == (24, 24)
    chosen = ImageFolderDataset(folder, classes=('star', 'circle'))
    assert chosen.metainfo['classes'] == ('star', 'circle') and len(chosen) == 6
    assert chosen[0]['labels'] == 0 and 'star' in chosen.samples[0][0]


def test_empty_class_and_missing_folders_fail_with_the_path(folder, tmp_path):
    (folder / 'empty_class').mkdir()
    with pytest.raises(DatasetError, match='empty_class'):
        ImageFolderDataset(folder)
    with pytest.raises(DatasetError, match='does not exist'):
        ImageFolderDataset(tmp_path / 'nowhere')
    with pytest.raises(DatasetError, match='missing'):
        ImageFolderDataset(folder, classes=('circle', 'hexagon'))
    (tmp_path / 'flat').mkdir()
    with pytest.raises(DatasetError, match='no class sub-folders'):
        ImageFolderDataset(tmp_path / 'flat')


@pytest.mark.parametrize('damage', ['truncate', 'garbage'])
def test_corrupt_image_is_skipped_or_fails_with_its_path(folder, caplog, damage):
    victim = sorted((folder / 'ring').iterdir())[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] if damage == 'truncate' else b'not an image at all')
    ds = ImageFolderDataset(folder, on_corrupt='skip')
    index = [p for p, _ in ds.samples].index(str(victim))
    with caplog.at_level(logging.WARNING):
        item = ds[index]
    assert item['labels'] == 1  # the next sample (same class folder) stands in
    assert str(victim) in caplog.text
    caplog.clear()
    ds[index]
    assert str(victim) not in caplog.text, 'a corrupt file is reported once'
    with pytest.raises(CorruptImageError, match=str(victim)):
        ImageFolderDataset(folder, on_corrupt='fail')[index]
    with pytest.raises(ValueError, match='on_corrupt'):
        ImageFolderDataset(folder, on_corrupt='ignore')
