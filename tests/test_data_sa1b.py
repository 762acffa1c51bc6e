"""SA-1B-layout shapes set and the SA1BMasks reader: layout, RLE round trip, agreement with the COCO set, errors."""
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vision_rwkv.data import coco_instance_sample, make_sa1b_set
from vision_rwkv.data.image_folder import CorruptImageError, DatasetError

mask_utils = pytest.importorskip('pycocotools.mask')
from vision_rwkv.engine.sam_data import SA1BMasks  # noqa: E402  (needs mmengine and pycocotools)

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(image_size=32, num_images=5, split='val', max_shapes=4, seed=3)


@pytest.fixture(scope='module')
def sa1b_root(tmp_path_factory):
    return make_sa1b_set(tmp_path_factory.mktemp('sa1b') / 'set', **SMALL)


def test_layout_and_records_are_sa1bs(sa1b_root):
    assert sorted(p.name for p in sa1b_root.glob('sa_*.json')) == [f'sa_{i}.json' for i in range(1, 6)]
    ann_ids = []
    for i in range(5):
        record = json.loads((sa1b_root / f'sa_{i + 1}.json').read_text())
        assert record['image'] == dict(image_id=i + 1, width=32, height=32, file_name=f'sa_{i + 1}.jpg')
        assert (sa1b_root / record['image']['file_name']).is_file()
        _, instances = coco_instance_sample(3, 'val', i, 32, 4)
        assert len(record['annotations']) == len(instances)
        for ann, (_, mask) in zip(record['annotations'], instances):
            assert set(ann) == {'id', 'segmentation', 'bbox', 'area', 'predicted_iou', 'point_coords', 'crop_box',
                                'stability_score'}
            rle = dict(ann['segmentation'], counts=ann['segmentation']['counts'].encode())
            assert np.array_equal(mask_utils.decode(rle).astype(bool), mask)
            assert ann['area'] == mask.sum() and ann['bbox'] == list(map(float, mask_utils.toBbox(rle)))
            x, y = ann['point_coords'][0]
            assert mask[int(y), int(x)]
            ann_ids.append(ann['id'])
    assert ann_ids == list(range(1, len(ann_ids) + 1))


def test_reader_gives_the_generated_masks(sa1b_root):
    data = SA1BMasks(str(sa1b_root), img_size=64)
    assert len(data) == 5 and data.metainfo['classes'] == ('object',)
    for i in range(5):
        item = data[i]
        _, instances = coco_instance_sample(3, 'val', i, 32, 4)
        expected = np.stack([m.repeat(2, 0).repeat(2, 1) for _, m in instances])
        assert item['inputs'].shape == (3, 64, 64) and item['inputs'].dtype == torch.uint8
        assert np.array_equal(item['data_samples'].masks.numpy(), expected)
        assert item['data_samples'].image_id == i + 1 and item['data_samples'].original_size == (32, 32)
    largest = SA1BMasks(str(sa1b_root), img_size=32, max_masks=1)
    for i in range(5):
        _, instances = coco_instance_sample(3, 'val', i, 32, 4)
        biggest = max((m for _, m in instances), key=lambda m: m.sum())
        assert np.array_equal(largest[i]['data_samples'].masks.numpy(), biggest[None])


def test_reader_takes_uncompressed_rle(sa1b_root, tmp_path):
    record = json.loads((sa1b_root / 'sa_1.json').read_text())
    rle = dict(record['annotations'][0]['segmentation'])
    mask = mask_utils.decode(dict(rle, counts=rle['counts'].encode()))
    flat = mask.flatten(order='F').tolist()  # column-major runs, starting with a run of zeros
    runs = [0] * flat[0] + [len(list(group)) for _, group in itertools.groupby(flat)]
    record['annotations'][0]['segmentation'] = dict(size=rle['size'], counts=runs)
    (tmp_path / 'sa_1.json').write_text(json.dumps(record))
    (tmp_path / 'sa_1.jpg').write_bytes((sa1b_root / 'sa_1.jpg').read_bytes())
    item = SA1BMasks(str(tmp_path), img_size=32)[0]
    assert np.array_equal(item['data_samples'].masks[0].numpy(), mask.astype(bool))


@pytest.mark.parametrize('edit, message', [
    (lambda r: '{"image": ', 'sa_1.json: not an SA-1B annotation file'),
    (lambda r: json.dumps({'annotations': r['annotations']}), "sa_1.json: not an SA-1B annotation file .*'image'"),
    (lambda r: json.dumps(dict(r, annotations=[dict(r['annotations'][0], segmentation=dict(size=[8, 8], counts='a'))])),
     r'sa_1.json: annotation 1 has a malformed RLE segmentation .*size \[8, 8\]'),
    (lambda r: json.dumps(dict(r, annotations=[dict(r['annotations'][0], segmentation=None)])),
     'sa_1.json: annotation 1 has a malformed RLE segmentation'),
    (lambda r: json.dumps(dict(r, annotations=[])), 'sa_1.json: no annotations'),
])
def test_bad_annotation_files_are_named(sa1b_root, tmp_path, edit, message):
    record = json.loads((sa1b_root / 'sa_1.json').read_text())
    (tmp_path / 'sa_1.jpg').write_bytes((sa1b_root / 'sa_1.jpg').read_bytes())
    (tmp_path / 'sa_1.json').write_text(edit(record))
    with pytest.raises(DatasetError, match=message):
        SA1BMasks(str(tmp_path), img_size=32)[0]


def test_missing_files_and_corrupt_images_are_named(sa1b_root, tmp_path):
    with pytest.raises(DatasetError, match='no SA-1B annotation file matches'):
        SA1BMasks(str(tmp_path))
    (tmp_path / 'sa_1.json').write_text((sa1b_root / 'sa_1.json').read_text())
    (tmp_path / 'sa_1.jpg').write_bytes((sa1b_root / 'sa_1.jpg').read_bytes()[:50])
    with pytest.raises(CorruptImageError, match='sa_1.jpg'):
        SA1BMasks(str(tmp_path), img_size=32)[0]


def test_generator_is_deterministic_and_checked(sa1b_root, tmp_path):
    again = make_sa1b_set(tmp_path / 'again', **SMALL)
    for name in ('sa_2.json', 'sa_2.jpg'):
        assert (again / name).read_bytes() == (sa1b_root / name).read_bytes()
    with pytest.raises(FileExistsError, match='other parameters'):
        make_sa1b_set(tmp_path / 'again', **dict(SMALL, num_images=4))
    with pytest.raises(ValueError, match='split'):
        make_sa1b_set(tmp_path / 'other', split='test')


def test_make_data_cli_writes_sa1b(tmp_path):
    out = tmp_path / 'cli'
    result = subprocess.run([sys.executable, str(REPO / 'tools' / 'make_data.py'), 'sa1b', '--out', str(out),
                             '--image-size', '32', '--images', '2'], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'SA-1B layout' in result.stdout and (out / 'sa_2.json').is_file()
