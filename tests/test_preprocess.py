import numpy as np
import pytest

from mrgen.data.preprocess import (CHAOS_WEIGHTS, MaskEncoding, pad_to_square, preprocess_image, preprocess_mask,
                                   resize_label_map, unpad_from_square)


def test_image_pipeline_range_and_shape():
    image = np.random.default_rng(0).integers(100, 3000, (30, 40)).astype(np.uint16)
    out = preprocess_image(image, 64)
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert out.max() > 0.9  # min-max normalised before resizing


def test_constant_image_becomes_black():
    assert np.all(preprocess_image(np.full((8, 8), 7, np.uint8), 8) == -1.0)


def test_pad_is_centred_with_the_odd_pixel_bottom_right():
    padded = pad_to_square(np.ones((2, 5)))
    assert padded.shape == (5, 5)
    assert padded[:, 0].tolist() == [0, 1, 1, 0, 0]  # 3 rows of padding: 1 on top, 2 below
    np.testing.assert_array_equal(unpad_from_square(padded, (2, 5)), np.ones((2, 5)))


def test_masks_stay_binary_and_nearest():
    mask = np.zeros((30, 40), np.uint8)
    mask[10:20, 5:25] = 255
    out = preprocess_mask(mask, 64)
    assert out.dtype == bool and out.shape == (64, 64)
    assert abs(out.mean() - (10 * 20) / (40 * 40)) < 0.02


def test_label_map_resize_keeps_ids():
    labels = np.zeros((10, 12), np.uint8)
    labels[2:5, 2:5] = 3
    labels[6:9, 6:11] = 4
    out = resize_label_map(labels, 48)
    assert set(np.unique(out)) == {0, 3, 4}


def test_intensity_encoding_matches_the_original_codes():
    size = 4
    masks = [np.zeros((size, size), bool) for _ in range(4)]
    for i, m in enumerate(masks):
        m[i, :] = True  # row i holds organ i
    coded = MaskEncoding(CHAOS_WEIGHTS).encode(masks, size)
    assert coded.shape == (1, size, size)
    np.testing.assert_allclose(coded[0, :, 0], [-0.4, 0.0, -0.2, 0.2], atol=1e-6)  # liver, R kidney, L kidney, spleen
    background = MaskEncoding(CHAOS_WEIGHTS).encode([None] * 4, size)
    assert np.all(background == -1.0)


def test_empty_condition_is_one_channel_of_background():
    assert MaskEncoding(CHAOS_WEIGHTS).empty(3).shape == (1, 3, 3) and np.all(MaskEncoding(CHAOS_WEIGHTS).empty(3) == -1)


def test_decode_inverts_encode():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (16, 16))
    masks = [labels == i + 1 for i in range(4)]
    enc = MaskEncoding(CHAOS_WEIGHTS)
    decoded = enc.decode(enc.encode(masks, 16), 4)
    for a, b in zip(masks, decoded):
        np.testing.assert_array_equal(a, b)


def test_bad_encoding_settings_are_rejected():
    with pytest.raises(ValueError, match="weights"):
        MaskEncoding((0.3, 1.5))
