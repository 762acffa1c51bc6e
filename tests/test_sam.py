"""RWKV-SAM end to end: registry, segment-anything records, our predictor, segment-anything's own classes."""
import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor

from vision_rwkv.errors import CheckpointError
from vision_rwkv.sam import RWKVSamPredictor, build_rwkv_sam, rwkv_sam_model_registry
from vision_rwkv.sam.predictor import to_rgb_uint8
from vision_rwkv.sam.utils.transforms import ResizeLongestSide

IMG_SIZE = 256  # embedding 16×16, low-resolution masks 64×64: small enough for CPU tests


@pytest.fixture(scope='module')
def sam():
    torch.manual_seed(0)
    return rwkv_sam_model_registry['tiny'](img_size=IMG_SIZE, depth=2)


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, size=(120, 200, 3), dtype=np.uint8)


def test_registry_builds_every_variant_in_eval_mode():
    for name in ('default', 'tiny', 'small', 'base'):
        model = rwkv_sam_model_registry[name](img_size=64, depth=1)
        assert not model.training and model.image_encoder.img_size == 64
        assert model.prompt_encoder.mask_input_size == (16, 16)
    with pytest.raises(ValueError, match='unknown RWKV-SAM variant'):
        build_rwkv_sam('huge')
    with pytest.raises(ValueError, match='multiple of 16'):
        build_rwkv_sam('tiny', img_size=100)


def test_forward_returns_segment_anything_records(sam, image):
    transform = ResizeLongestSide(IMG_SIZE)
    resized = torch.as_tensor(transform.apply_image(image)).permute(2, 0, 1).float()
    points = torch.as_tensor(transform.apply_coords(np.array([[[50., 60.], [150., 20.]]]), image.shape[:2]))
    batch = [
        dict(image=resized, original_size=image.shape[:2], point_coords=points.float(),
             point_labels=torch.tensor([[1, 0]])),
        dict(image=resized, original_size=image.shape[:2], boxes=torch.tensor([[10., 10., 100., 90.],
                                                                               [0., 0., 50., 50.]])),
    ]
    with torch.no_grad():
        out = sam(batch, multimask_output=True)
    assert [sorted(r) for r in out] == [['iou_predictions', 'low_res_logits', 'masks']] * 2
    assert out[0]['masks'].shape == (1, 3, 120, 200) and out[0]['masks'].dtype == torch.bool
    assert out[1]['masks'].shape == (2, 3, 120, 200)
    assert out[1]['low_res_logits'].shape == (2, 3, 64, 64) and out[1]['iou_predictions'].shape == (2, 3)


def test_our_predictor_matches_segment_anythings_predictor(sam, image):
    ours, theirs = RWKVSamPredictor(sam), SamPredictor(sam)
    ours.set_image(image)
    theirs.set_image(image)
    # segment-anything's get_image_embedding() gives the (1, 256, h, w) tensor its callers expect
    embedding = theirs.get_image_embedding()
    assert isinstance(embedding, torch.Tensor) and embedding.shape == (1, 256, 16, 16)
    assert torch.equal(ours.get_image_embedding(), embedding)
    assert type(ours.get_image_embedding()) is torch.Tensor
    prompts = [
        dict(point_coords=np.array([[50, 60], [120, 30]]), point_labels=np.array([1, 0])),
        dict(box=np.array([10, 10, 100, 90]), multimask_output=False),
        dict(point_coords=np.array([[50, 60]]), point_labels=np.array([1]), box=np.array([10, 10, 100, 90])),
    ]
    for prompt in prompts:
        m1, s1, l1 = ours.predict(**prompt)
        m2, s2, l2 = theirs.predict(**prompt)
        assert m1.shape == m2.shape == ((3,) if prompt.get('multimask_output', True) else (1,)) + image.shape[:2]
        np.testing.assert_array_equal(m1, m2)
        np.testing.assert_allclose(s1, s2, atol=1e-6)
        np.testing.assert_allclose(l1, l2, atol=1e-5)
    # an earlier prediction's logits as mask prompt, and logits instead of masks
    _, _, low = ours.predict(point_coords=np.array([[50, 60]]), point_labels=np.array([1]), multimask_output=False)
    logits, _, _ = ours.predict(point_coords=np.array([[50, 60]]), point_labels=np.array([1]), mask_input=low,
                                multimask_output=False, return_logits=True)
    assert logits.dtype == np.float32 and logits.shape == (1, 120, 200)


def test_predict_torch_batches_prompts(sam, image):
    predictor = RWKVSamPredictor(sam)
    predictor.set_image(image)
    boxes = predictor.transform.apply_boxes_torch(torch.tensor([[10., 10., 100., 90.], [0., 0., 60., 60.]]),
                                                  image.shape[:2])
    masks, scores, low = predictor.predict_torch(None, None, boxes=boxes, multimask_output=True)
    assert masks.shape == (2, 3, 120, 200) and scores.shape == (2, 3) and low.shape == (2, 3, 64, 64)
    logits, _, _ = predictor.predict_torch(None, None, boxes=boxes, multimask_output=True, return_logits=True)
    single, _, _ = predictor.predict(box=np.array([10, 10, 100, 90]), return_logits=True)
    np.testing.assert_allclose(logits[0].numpy(), single, atol=1e-5)  # batching reorders float sums only
    np.testing.assert_array_equal(masks[0].numpy(), logits[0].numpy() > predictor.model.mask_threshold)


def test_segment_anythings_automatic_mask_generator_runs_on_our_model(sam, image):
    generator = SamAutomaticMaskGenerator(sam, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                          output_mode='coco_rle')
    records = generator.generate(image)
    assert records, 'no mask survived with every threshold at 0'
    assert set(records[0]) == {'segmentation', 'area', 'bbox', 'predicted_iou', 'point_coords', 'stability_score',
                               'crop_box'}
    assert set(records[0]['segmentation']) == {'size', 'counts'}


def test_image_kinds_are_normalised():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    assert np.array_equal(to_rgb_uint8(rgb[..., 0]), np.repeat(rgb[..., :1], 3, axis=2))
    assert np.array_equal(to_rgb_uint8(rgb[..., :1]), np.repeat(rgb[..., :1], 3, axis=2))
    rgba = np.concatenate([rgb, np.full((8, 9, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(to_rgb_uint8(rgba), rgb)
    assert np.array_equal(to_rgb_uint8(rgb.astype(np.uint16) * 257), rgb)
    assert np.array_equal(to_rgb_uint8(rgb, 'BGR'), rgb[..., ::-1])
    for bad, message in ((rgb.astype(np.float32), 'uint8 or uint16'), (rgb[..., :2], 'image, got shape'),
                         (np.zeros((0, 4, 3), np.uint8), 'image, got shape')):
        with pytest.raises(ValueError, match=message):
            to_rgb_uint8(bad)
    with pytest.raises(ValueError, match='image_format'):
        to_rgb_uint8(rgb, 'HSV')


def test_predictor_accepts_grayscale_rgba_and_16_bit(sam, image):
    predictor = RWKVSamPredictor(sam)
    for variant in (image[..., 0], np.concatenate([image, image[..., :1]], axis=2), image.astype(np.uint16) * 257):
        predictor.set_image(variant)
        masks, _, _ = predictor.predict(box=np.array([10, 10, 100, 90]))
        assert masks.shape == (3, 120, 200)


@pytest.mark.parametrize('prompt, message', [
    (dict(), 'no prompt'),
    (dict(point_coords=np.array([[1, 2]])), 'go together'),
    (dict(point_coords=np.array([[1, 2], [3, 4]]), point_labels=np.array([1])), '2 points but point_labels'),
    (dict(point_coords=np.array([[1, 2]]), point_labels=np.array([2])), 'must be 1 .* or 0'),
    (dict(point_coords=np.array([[np.nan, 2]]), point_labels=np.array([1])), 'NaN or inf'),
    (dict(point_coords=np.array([[250, 20]]), point_labels=np.array([1])), 'outside the 200×120 image'),
    (dict(box=np.array([100, 10, 10, 90])), 'x1 < x0'),
    (dict(box=np.array([300, 200, 400, 300])), 'lies outside'),
    (dict(box=np.array([1, 2, 3])), '4 finite numbers'),
    (dict(box=np.array([10, 10, 100, 90]), mask_input=np.zeros((1, 256, 256))), r'mask_input must be \(1, 64, 64\)'),
])
def test_bad_prompts_give_clear_errors(sam, image, prompt, message):
    predictor = RWKVSamPredictor(sam)
    predictor.set_image(image)
    with pytest.raises(ValueError, match=message):
        predictor.predict(**prompt)


def test_boxes_overlapping_the_image_are_clipped(sam, image):
    predictor = RWKVSamPredictor(sam)
    predictor.set_image(image)
    clipped, _, _ = predictor.predict(box=np.array([-20, -5, 250, 130]))
    inside, _, _ = predictor.predict(box=np.array([0, 0, 200, 120]))
    np.testing.assert_array_equal(clipped, inside)


def test_predict_before_set_image_and_bad_torch_image(sam):
    predictor = RWKVSamPredictor(sam)
    with pytest.raises(RuntimeError, match='set_image'):
        predictor.predict(box=np.array([0, 0, 5, 5]))
    with pytest.raises(ValueError, match='longest side 256'):
        predictor.set_torch_image(torch.zeros(1, 3, 100, 100), (100, 100))


def test_checkpoint_round_trip_and_mismatch(sam, image, tmp_path):
    path = tmp_path / 'rwkv_sam_tiny.pth'
    torch.save({'state_dict': {f'model.{k}': v for k, v in sam.state_dict().items()}}, path)
    loaded = rwkv_sam_model_registry['tiny'](checkpoint=str(path), img_size=IMG_SIZE, depth=2)
    a, b = RWKVSamPredictor(sam), RWKVSamPredictor(loaded)
    a.set_image(image)
    b.set_image(image)
    np.testing.assert_array_equal(a.predict(box=np.array([10, 10, 100, 90]))[2],
                                  b.predict(box=np.array([10, 10, 100, 90]))[2])
    with pytest.raises(CheckpointError, match=r"image encoder 'tiny' \(2 VRWKV blocks of dim 192\), but this "
                                              r"model's is 'tiny' \(3 VRWKV blocks of dim 192\)"):
        rwkv_sam_model_registry['tiny'](checkpoint=str(path), img_size=IMG_SIZE, depth=3)
    with pytest.raises(CheckpointError, match=r"'tiny' \(2 VRWKV blocks .* this model's is 'small' \(2 VRWKV blocks "
                                              r"of dim 384\)"):
        rwkv_sam_model_registry['small'](checkpoint=str(path), img_size=IMG_SIZE, depth=2)
    with pytest.raises(CheckpointError, match=r"'tiny' \(2 VRWKV blocks .* this model's is 'tiny_v6' \(2 VRWKV6"):
        rwkv_sam_model_registry['tiny_v6'](checkpoint=str(path), img_size=IMG_SIZE, depth=2)
    for fusion in ('add', 'none'):  # the same encoder, another decoder
        with pytest.raises(CheckpointError, match='does not fit this RWKV-SAM.*decoder fusion'):
            rwkv_sam_model_registry['tiny'](checkpoint=str(path), img_size=IMG_SIZE, depth=2, fusion=fusion)
