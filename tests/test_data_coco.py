"""Embedded COCO-format instance segmentation set: layout, json, pycocotools round trip, determinism, CLI."""
import filecmp
import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vision_rwkv.cli import run_tool
from vision_rwkv.data import (COCO_CATEGORIES, COCO_CLASSES, SHAPE_CLASSES, coco_instance_sample,
                              make_coco_instance_set)
from vision_rwkv.data.coco import (BACKGROUND_CONTRAST, MIN_AREA, POLYGON_MIN_IOU, RADIUS_RANGE, RLE_EVERY,
                                   STREAM_TAG, encode_segmentation, mask_to_polygons, polygons_to_mask)
from vision_rwkv.data.generate import META_FILE
from vision_rwkv.data.segmentation import STREAM_TAG as SEG_STREAM_TAG

pytest.importorskip('cv2')
mask_utils = pytest.importorskip('pycocotools.mask')
COCO = pytest.importorskip('pycocotools.coco').COCO

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(image_size=32, train_images=6, val_images=3, max_shapes=4)
COUNTS = {'train': 6, 'val': 3}


def _annotation_file(root: Path, split: str) -> Path:
    return root / 'annotations' / f'instances_{split}.json'


def _load(root: Path, split: str) -> COCO:
    return COCO(str(_annotation_file(root, split)))


@pytest.fixture(scope='module')
def small_set(tmp_path_factory):
    return make_coco_instance_set(tmp_path_factory.mktemp('coco') / 'shapes', **SMALL)


def test_categories_and_stream_tag():
    assert COCO_CLASSES == SHAPE_CLASSES and len(COCO_CLASSES) == 8
    assert [c['id'] for c in COCO_CATEGORIES] == list(range(1, 9))
    assert [c['name'] for c in COCO_CATEGORIES] == list(COCO_CLASSES)
    assert {c['supercategory'] for c in COCO_CATEGORIES} == {'shape'}
    assert STREAM_TAG != SEG_STREAM_TAG and STREAM_TAG >= len(SHAPE_CLASSES)


def test_layout_and_json(small_set):
    root = small_set
    assert sorted(p.name for p in root.iterdir()) == ['annotations', META_FILE, 'train', 'val']
    assert sorted(p.name for p in (root / 'annotations').iterdir()) == ['instances_train.json', 'instances_val.json']
    for split, count in COUNTS.items():
        names = [f'shapes_{split}_{i:05d}.jpg' for i in range(count)]
        assert sorted(p.name for p in (root / split).iterdir()) == names
        for name in names:
            with Image.open(root / split / name) as img:
                assert img.format == 'JPEG' and img.mode == 'RGB' and img.size == (32, 32)
        data = json.loads(_annotation_file(root, split).read_text())
        assert set(data) == {'info', 'licenses', 'images', 'annotations', 'categories'}
        assert data['categories'] == list(COCO_CATEGORIES)
        assert data['images'] == [dict(id=i + 1, file_name=n, height=32, width=32) for i, n in enumerate(names)]
        anns = data['annotations']
        assert [a['id'] for a in anns] == list(range(1, len(anns) + 1)), 'ids unique, 1, 2, ...'
        for a in anns:
            assert set(a) == {'id', 'image_id', 'category_id', 'segmentation', 'area', 'bbox', 'iscrowd'}
            assert a['iscrowd'] == 0 and 1 <= a['category_id'] <= 8 and 1 <= a['image_id'] <= count
            assert isinstance(a['area'], int) and a['area'] >= MIN_AREA
            assert len(a['bbox']) == 4 and all(isinstance(v, float) for v in a['bbox'])
        assert {a['image_id'] for a in anns} == set(range(1, count + 1)), 'every image has an instance'
    meta = json.loads((root / META_FILE).read_text())
    assert meta == dict(SMALL, kind='coco_instance', classes=list(COCO_CLASSES), seed=0, min_area=MIN_AREA,
                        background_contrast=BACKGROUND_CONTRAST, radius_range=list(RADIUS_RANGE))


def test_pycocotools_masks_match_the_generator(small_set):
    encodings = set()
    for split, count in COUNTS.items():
        coco = _load(small_set, split)
        assert sorted(coco.getCatIds()) == list(range(1, 9))
        for image_id in coco.getImgIds():
            image, instances = coco_instance_sample(0, split, image_id - 1, 32, 4)
            stored = np.asarray(Image.open(small_set / split / coco.imgs[image_id]['file_name']), dtype=np.float64)
            # JPEG (4:2:0 chroma) costs up to ~20 grey levels on saturated 32 px textures; another image is ≥ 70 away
            assert np.abs(stored - image).mean() < 30, 'the JPEG is the sample image'
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            assert [a['category_id'] for a in anns] == [c for c, _ in instances]
            for ann, (_, mask) in zip(anns, instances):
                decoded = coco.annToMask(ann).astype(bool)
                polygon = isinstance(ann['segmentation'], list)
                encodings.add('polygon' if polygon else 'rle')
                if polygon:
                    assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann['segmentation'])
                    assert ann['id'] % RLE_EVERY != 0
                    iou = (decoded & mask).sum() / (decoded | mask).sum()
                    assert iou >= 0.9, f'{split} annotation {ann["id"]}: polygon IoU {iou:.3f}'
                else:
                    assert isinstance(ann['segmentation']['counts'], str)
                    assert ann['segmentation']['size'] == [32, 32]
                    assert np.array_equal(decoded, mask)
                assert ann['area'] == int(mask.sum())
                ys, xs = np.nonzero(mask)
                assert ann['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                assert mask_utils.toBbox(rle).tolist() == ann['bbox']
    assert encodings == {'polygon', 'rle'}, 'readers must meet both encodings'


def test_sample_instances_are_visible_masks():
    seed = random.randrange(2 ** 16)
    for index in range(30):
        image, instances = coco_instance_sample(seed, 'val', index, image_size=32, max_shapes=4)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert 1 <= len(instances) <= 4
        union = np.zeros((32, 32), dtype=int)
        for category_id, mask in instances:
            assert 1 <= category_id <= 8 and mask.dtype == bool and mask.shape == (32, 32)
            assert mask.sum() >= MIN_AREA
            union += mask
        assert union.max() == 1, 'visible masks do not overlap'
    again = coco_instance_sample(seed, 'val', 3, image_size=32, max_shapes=4)
    first = coco_instance_sample(seed, 'val', 3, image_size=32, max_shapes=4)
    assert np.array_equal(again[0], first[0])


def test_encoding_rule():
    yy, xx = np.mgrid[0:40, 0:40]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 12 ** 2
    ring = disc & ((yy - 20) ** 2 + (xx - 20) ** 2 > 6 ** 2)
    polygons = encode_segmentation(disc, 1)
    assert isinstance(polygons, list) and np.array_equal(polygons_to_mask(polygons, 40, 40), disc)
    assert isinstance(encode_segmentation(disc, RLE_EVERY), dict), 'every RLE_EVERY-th id is RLE'
    # a ring's hole cannot be a polygon: its polygon round trip loses too much, so it falls back to RLE
    lossy = polygons_to_mask(mask_to_polygons(ring), 40, 40)
    assert (lossy & ring).sum() / (lossy | ring).sum() < POLYGON_MIN_IOU
    rle = encode_segmentation(ring, 1)
    assert isinstance(rle, dict) and np.array_equal(mask_utils.decode({**rle, 'counts': rle['counts'].encode()}),
                                                    ring)


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    seed = random.randrange(2 ** 16)
    small = dict(SMALL, train_images=3, val_images=2)
    a = make_coco_instance_set(tmp_path / 'a', seed=seed, **small)
    b = make_coco_instance_set(tmp_path / 'b', seed=seed, **small)
    c = make_coco_instance_set(tmp_path / 'c', seed=seed + 1, **small)
    files = sorted(str(p.relative_to(a)) for p in a.rglob('*') if p.suffix in ('.jpg', '.json'))
    assert len(files) == 3 + 2 + 2 + 1
    match, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert len(match) == len(files) and not mismatch and not errors
    _, differ, _ = filecmp.cmpfiles(a, c, files, shallow=False)
    assert 'annotations/instances_train.json' in differ and 'train/shapes_train_00000.jpg' in differ


def test_reuses_matching_root_and_rejects_other_parameters(tmp_path):
    small = dict(SMALL, train_images=2, val_images=1)
    root = make_coco_instance_set(tmp_path / 'd', **small)
    stamp = (root / META_FILE).stat().st_mtime_ns
    assert make_coco_instance_set(tmp_path / 'd', **small) == root
    assert (root / META_FILE).stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match='other parameters'):
        make_coco_instance_set(tmp_path / 'd', **dict(small, max_shapes=2))
    (tmp_path / 'foreign').mkdir()
    with pytest.raises(FileExistsError, match='not written by the generator'):
        make_coco_instance_set(tmp_path / 'foreign', **small)


@pytest.mark.parametrize('bad', [dict(image_size=16), dict(image_size=32.0), dict(train_images=0),
                                 dict(val_images=-1), dict(max_shapes=0), dict(seed=-1), dict(max_shapes=True)])
def test_bad_arguments_raise_value_error(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_coco_instance_set(tmp_path / 'bad', **dict(SMALL, **bad))
    assert not (tmp_path / 'bad').exists()


def _load_make_data():
    spec = importlib.util.spec_from_file_location('make_data', REPO / 'tools' / 'make_data.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_writes_the_set(tmp_path, monkeypatch, capsys):
    # main() in this process: a subprocess spends seconds importing torch (tests/test_data_seg.py runs the
    # same script as a process); argument parsing, the coco subcommand and the output are the same
    out = tmp_path / 'cli'
    monkeypatch.setattr(sys, 'argv', ['make_data.py', 'coco', '--out', str(out), '--image-size', '32',
                                      '--train-images', '2', '--val-images', '1'])
    _load_make_data().main()
    stdout = capsys.readouterr().out
    assert 'COCO layout' in stdout and stdout.count('\n') == 1
    assert len(_load(out, 'train').imgs) == 2 and len(_load(out, 'val').imgs) == 1
    assert json.loads((out / META_FILE).read_text())['max_shapes'] == 4


@pytest.mark.parametrize('args, message', [(['--image-size', '8'], 'error: image_size'),
                                           (['--max-shapes', '0'], 'error: max_shapes')])
def test_cli_rejects_bad_arguments_with_exit_code_2_and_one_line(tmp_path, monkeypatch, capsys, args, message):
    make_data = _load_make_data()
    monkeypatch.setattr(sys, 'argv', ['make_data.py', 'coco', '--out', str(tmp_path / 'bad'), *args])
    with pytest.raises(SystemExit) as exit_info:
        run_tool(make_data.main)  # as its __main__ does
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith(message) and stderr.count('\n') == 1
    assert not (tmp_path / 'bad').exists()
