"""RWKV-SAM automatic mask generator: record-for-record equal to segment-anything's on the same model,
its helpers on hand-made cases, and its argument checks."""
import hashlib
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils import amg as sa_amg

from vision_rwkv.sam import rwkv_sam_model_registry
from vision_rwkv.sam.automatic_mask_generator import RWKVSamAutomaticMaskGenerator
from vision_rwkv.sam.utils.amg import (MaskData, area_from_rle, box_xyxy_to_xywh, build_all_layer_point_grids,
                                       build_point_grid, calculate_stability_score, coco_encode_rle,
                                       fill_small_holes, generate_crop_boxes, is_box_near_crop_edge, mask_to_box,
                                       mask_to_rle, remove_small_islands, rle_to_mask, uncrop_masks)

RECORD_KEYS = {'segmentation', 'area', 'bbox', 'predicted_iou', 'point_coords', 'stability_score', 'crop_box'}
# The untrained decoder's logits lie within about ±0.7: at this mask threshold its masks vary in size and
# shape (islands, holes), and a small stability offset gives stability scores spread over [0, 1].
MASK_THRESHOLD = 0.2
OFFSET = 0.02
ALL_MASKS = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, stability_score_offset=OFFSET)


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Small tensors: one intra-op thread is as fast, and far faster when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def sam():
    """Tiny RWKV-SAM whose image encoder remembers its outputs: both generators encode the same image and
    crops, so each is encoded once (the encoder is deterministic; its equality is tested in test_sam.py)."""
    torch.manual_seed(0)
    model = rwkv_sam_model_registry['tiny'](img_size=256, depth=2)
    model.mask_threshold = MASK_THRESHOLD
    encode, memory = model.image_encoder.forward, {}

    def remembering_forward(x):
        key = (tuple(x.shape), hashlib.sha1(x.detach().cpu().numpy().tobytes()).hexdigest())
        if key not in memory:
            memory[key] = encode(x)
        return memory[key]

    model.image_encoder.forward = remembering_forward
    return model


@pytest.fixture(scope='module')
def image():
    """120×200 RGB: two rectangles and a disc on a dark background, with noise."""
    rng = np.random.default_rng(0)
    image = np.full((120, 200, 3), 30, dtype=np.int64)
    image[10:60, 20:90] = (220, 40, 40)
    image[70:110, 120:190] = (40, 200, 60)
    yy, xx = np.mgrid[:120, :200]
    image[(yy - 40) ** 2 + (xx - 150) ** 2 < 400] = (50, 60, 230)
    return np.clip(image + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- equivalence

SETTINGS = {
    'all masks, binary_mask': dict(points_per_side=4, **ALL_MASKS),
    'filters, small batches, uncompressed_rle': dict(points_per_side=5, points_per_batch=7, pred_iou_thresh=0.005,
                                                     stability_score_thresh=0.3, stability_score_offset=OFFSET,
                                                     box_nms_thresh=0.9, output_mode='uncompressed_rle'),
    'crop layer, coco_rle': dict(points_per_side=4, crop_n_layers=1, crop_n_points_downscale_factor=2,
                                 output_mode='coco_rle', **ALL_MASKS),
    'small regions removed': dict(points_per_side=4, min_mask_region_area=50, box_nms_thresh=0.9, **ALL_MASKS),
    'explicit point grid': dict(points_per_side=None, box_nms_thresh=0.8, **ALL_MASKS,
                                point_grids=[np.random.default_rng(1).uniform(0, 1, (10, 2))]),
}


def assert_same_records(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert set(a) == set(b) == RECORD_KEYS
        if isinstance(b['segmentation'], np.ndarray):
            assert a['segmentation'].shape == b['segmentation'].shape
            np.testing.assert_array_equal(a['segmentation'], b['segmentation'])
        else:
            assert a['segmentation'] == b['segmentation']
        for key in ('area', 'bbox', 'crop_box', 'point_coords'):
            assert a[key] == b[key], key
        assert a['predicted_iou'] == pytest.approx(b['predicted_iou'], abs=1e-6)
        assert a['stability_score'] == pytest.approx(b['stability_score'], abs=1e-6, nan_ok=True)


@pytest.mark.parametrize('setting', SETTINGS)
def test_records_equal_segment_anythings(sam, image, setting):
    kwargs = SETTINGS[setting]
    ours = RWKVSamAutomaticMaskGenerator(sam, **kwargs).generate(image)
    theirs = SamAutomaticMaskGenerator(sam, **kwargs).generate(image)
    assert len(ours) > 1, 'too few masks to compare'
    assert_same_records(ours, theirs)
    if 'crop_n_layers' in kwargs:
        assert len({tuple(r['crop_box']) for r in ours}) > 1, 'no mask from a crop survived'
    if 'min_mask_region_area' in kwargs:
        unprocessed = RWKVSamAutomaticMaskGenerator(sam, **dict(kwargs, min_mask_region_area=0)).generate(image)
        assert [r['area'] for r in ours] != [r['area'] for r in unprocessed], 'no small region was removed'


def test_records_describe_their_masks(sam, image):
    records = RWKVSamAutomaticMaskGenerator(sam, points_per_side=3, **ALL_MASKS).generate(image)
    assert records
    for record in records:
        mask = record['segmentation']
        assert mask.shape == image.shape[:2] and mask.dtype == bool
        assert isinstance(record['area'], int) and record['area'] == mask.sum()
        assert all(isinstance(v, int) for v in record['bbox'] + record['crop_box'])
        ys, xs = np.nonzero(mask)
        box = [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()] if len(xs) else [0, 0, 0, 0]
        assert record['bbox'] == box
        assert record['crop_box'] == [0, 0, 200, 120]
        (x, y), = record['point_coords']
        assert 0 <= x <= 200 and 0 <= y <= 120
        assert isinstance(record['predicted_iou'], float) and 0 <= record['stability_score'] <= 1
    # the untrained model's predicted IoUs (< 0.1) never pass the default threshold
    assert RWKVSamAutomaticMaskGenerator(sam, points_per_side=3, min_mask_region_area=10).generate(image) == []


def test_image_kinds_are_normalised(sam, image):
    generator = RWKVSamAutomaticMaskGenerator(sam, points_per_side=2, output_mode='uncompressed_rle', **ALL_MASKS)
    gray = image[..., 1]
    assert_same_records(generator.generate(gray), generator.generate(np.repeat(gray[..., None], 3, axis=2)))
    assert_same_records(generator.generate(image[..., ::-1], image_format='BGR'), generator.generate(image))


# ----------------------------------------------------------------------------- helpers

def random_masks(*shape, seed=0):
    masks = torch.from_numpy(np.random.default_rng(seed).random(shape) < 0.4)
    masks[0] = False                                    # empty
    masks[1] = True                                     # full: the RLE starts with an empty run of 0
    masks[2, :, :] = False
    masks[2, 0, 0] = True                               # first pixel only
    return masks


def test_rle_round_trip_and_area():
    masks = random_masks(6, 7, 5)
    rles = mask_to_rle(masks)
    assert rles == sa_amg.mask_to_rle_pytorch(masks)
    assert rles[0] == {'size': [7, 5], 'counts': [35]}
    assert rles[1] == {'size': [7, 5], 'counts': [0, 35]}
    assert rles[2] == {'size': [7, 5], 'counts': [0, 1, 34]}
    for mask, rle in zip(masks.numpy(), rles):
        assert sum(rle['counts']) == mask.size
        decoded = rle_to_mask(rle)
        assert decoded.dtype == bool and decoded.flags.c_contiguous
        np.testing.assert_array_equal(decoded, mask)
        assert area_from_rle(rle) == mask.sum()
        coco = coco_encode_rle(rle)
        assert coco['size'] == [7, 5] and isinstance(coco['counts'], str)
        assert coco['counts'] == mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))['counts'].decode()
    assert mask_to_rle(torch.zeros(0, 4, 4, dtype=torch.bool)) == []


def test_stability_score_on_a_known_case():
    logits = torch.tensor([[3., 2., 0.5, -0.5],
                           [-3., 1.5, 0.9, -2.]])  # as a (1, 2, 4) mask
    # above 1 + 0.5: 3, 2; above 1 - 0.5: 3, 2, 1.5, 0.9 -> 2 / 4
    assert calculate_stability_score(logits[None], 1.0, 0.5).tolist() == [0.5]
    batch = torch.randn(2, 3, 8, 8)
    expected = sa_amg.calculate_stability_score(batch, 0.1, 0.3)
    torch.testing.assert_close(calculate_stability_score(batch, 0.1, 0.3), expected)
    assert math.isnan(calculate_stability_score(torch.full((1, 2, 2), -5.), 0., 1.).item())


def test_box_from_mask():
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 1:4, 2:7] = True
    masks[1, 5, 0] = True
    masks[1, 0, 7] = True
    assert mask_to_box(masks).tolist() == [[2, 1, 6, 3], [0, 0, 7, 5], [0, 0, 0, 0]]
    assert mask_to_box(masks).dtype == torch.int64
    assert mask_to_box(masks[0]).tolist() == [2, 1, 6, 3]
    assert mask_to_box(torch.zeros(0, 6, 8, dtype=torch.bool)).shape == (0, 4)
    batch = random_masks(12, 9, 11).reshape(3, 4, 9, 11)
    assert torch.equal(mask_to_box(batch), sa_amg.batched_mask_to_box(batch))
    assert box_xyxy_to_xywh(torch.tensor([2, 1, 6, 3])).tolist() == [2, 1, 4, 2]


def test_point_grids_and_crop_boxes_follow_segment_anything():
    assert build_point_grid(2).tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    for n in (1, 3, 32):
        np.testing.assert_array_equal(build_point_grid(n), sa_amg.build_point_grid(n))
    assert [len(g) for g in build_all_layer_point_grids(8, 2, 2)] == [64, 16, 4]
    assert generate_crop_boxes((120, 200), 1, 512 / 1500) == (
        [[0, 0, 200, 120], [0, 0, 120, 80], [0, 40, 120, 120], [80, 0, 200, 80], [80, 40, 200, 120]], [0, 1, 1, 1, 1])
    for size, layers, ratio in (((120, 200), 2, 512 / 1500), ((333, 97), 3, 0.2), ((64, 64), 1, 0.0)):
        assert generate_crop_boxes(size, layers, ratio) == sa_amg.generate_crop_boxes(size, layers, ratio)


def test_crop_edges_and_uncropping():
    crop = [80, 40, 200, 120]                           # touches the image's right and bottom sides
    boxes = torch.tensor([[30, 30, 60, 60],             # inside
                          [5, 30, 60, 60],              # within 20 px of the crop's left side
                          [30, 30, 119, 79]])           # on the image's sides only
    assert is_box_near_crop_edge(boxes, crop, [0, 0, 200, 120]).tolist() == [False, True, False]
    masks = torch.ones(1, 80, 120, dtype=torch.bool)
    full = uncrop_masks(masks, crop, 120, 200)
    assert full.shape == (1, 120, 200) and full.sum() == 80 * 120 and full[0, 40:, 80:].all()
    assert uncrop_masks(masks, [0, 0, 120, 80], 80, 120) is masks


def test_small_holes_and_islands():
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:8, 1:8] = True
    mask[3, 3] = False                                  # 1-pixel hole
    mask[9, 9] = True                                   # 1-pixel island (diagonal to nothing)
    filled, changed = fill_small_holes(mask, 2)
    assert changed and filled[3, 3] and filled.sum() == mask.sum() + 1
    cleaned, changed = remove_small_islands(filled, 2)
    assert changed and not cleaned[9, 9] and cleaned.sum() == 49
    assert remove_small_islands(cleaned, 2) == (cleaned, False)
    same, changed = fill_small_holes(cleaned, 2)
    assert not changed and same is cleaned
    # every island small: the largest stays
    islands = np.zeros((6, 6), dtype=bool)
    islands[0, 0] = True
    islands[3:5, 3:5] = True
    kept, changed = remove_small_islands(islands, 10)
    assert changed and kept.sum() == 4 and kept[3:5, 3:5].all()
    for tested, reference in ((fill_small_holes, 'holes'), (remove_small_islands, 'islands')):
        for seed in range(3):
            random = np.random.default_rng(seed).random((20, 30)) < 0.5
            ours, reference_out = tested(random, 4), sa_amg.remove_small_regions(random, 4, reference)
            np.testing.assert_array_equal(ours[0], reference_out[0])
            assert ours[1] == reference_out[1]


def test_mask_data_filters_and_concatenates():
    data = MaskData(scores=torch.tensor([0.1, 0.2, 0.3]), rles=['a', 'b', 'c'])
    data.filter(torch.tensor([True, False, True]))
    assert data['scores'].tolist() == pytest.approx([0.1, 0.3]) and data['rles'] == ['a', 'c'] and len(data) == 2
    data.filter(torch.tensor([1, 0]))
    assert data['rles'] == ['c', 'a']
    merged = MaskData.cat([data, MaskData(scores=torch.tensor([0.5]), rles=['d'])])
    assert merged['rles'] == ['c', 'a', 'd'] and len(merged) == 3
    with pytest.raises(TypeError, match='tensor or a list'):
        MaskData(boxes=np.zeros((1, 4)))


# ----------------------------------------------------------------------------- argument errors

@pytest.mark.parametrize('kwargs, message', [
    (dict(output_mode='png'), 'output_mode must be one of'),
    (dict(points_per_side=None), 'exactly one of points_per_side and point_grids'),
    (dict(point_grids=[np.full((4, 2), 0.5)]), 'exactly one of points_per_side and point_grids'),
    (dict(points_per_side=0), 'points_per_side must be an integer >= 1'),
    (dict(points_per_side=2.5), 'points_per_side must be an integer >= 1'),
    (dict(points_per_batch=0), 'points_per_batch must be an integer >= 1'),
    (dict(crop_n_layers=-1), 'crop_n_layers must be an integer >= 0'),
    (dict(crop_n_points_downscale_factor=0), 'crop_n_points_downscale_factor must be an integer >= 1'),
    (dict(points_per_side=4, crop_n_layers=3, crop_n_points_downscale_factor=2), 'leaves no point in crop layer 3'),
    (dict(crop_overlap_ratio=1.0), r'crop_overlap_ratio must be in \[0, 1\)'),
    (dict(min_mask_region_area=-1), 'min_mask_region_area must be >= 0'),
    (dict(points_per_side=None, point_grids=[np.full((4, 2), 0.5)], crop_n_layers=1), 'one grid per crop layer'),
    (dict(points_per_side=None, point_grids=[np.full((4, 3), 0.5)]), r'point_grids\[0\] must be a non-empty'),
    (dict(points_per_side=None, point_grids=[np.zeros((0, 2))]), r'point_grids\[0\] must be a non-empty'),
    (dict(points_per_side=None, point_grids=[np.full((4, 2), 1.5)]), r'normalised to \[0, 1\]'),
])
def test_bad_arguments_give_clear_errors(sam, kwargs, message):
    with pytest.raises(ValueError, match=message):
        RWKVSamAutomaticMaskGenerator(sam, **kwargs)


def test_bad_images_give_clear_errors(sam):
    generator = RWKVSamAutomaticMaskGenerator(sam, points_per_side=2)
    with pytest.raises(ValueError, match='uint8 or uint16'):
        generator.generate(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match='image_format'):
        generator.generate(np.zeros((8, 8, 3), dtype=np.uint8), image_format='HSV')
