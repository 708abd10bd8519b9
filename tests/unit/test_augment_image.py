"""Image operations: deterministic per row and variant, size-preserving, each one really changes the
image, in an order drawn per variant; and the key scheme that makes a retried shard overwrite."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sampleforge.jobs.augment.image import OPERATIONS, _encode, apply_operations, image_key
from sampleforge.jobs.augment.randomness import RowRandomness
from sampleforge.jobs.common.storage import S3Uri


def _product_photo() -> Image.Image:
    """A small catalogue-style picture: a coloured, asymmetric object on white."""
    image = Image.new("RGB", (96, 64), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 12, 50, 52), fill=(200, 30, 40))
    draw.ellipse((55, 20, 85, 40), fill=(20, 90, 200))
    draw.line((0, 63, 95, 0), fill=(10, 160, 60), width=3)
    return image


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_each_operation_changes_the_image_and_keeps_its_size(operation: str) -> None:
    image = _product_photo()
    rng = RowRandomness(1, "image").generator(4, "image-0")
    edited = apply_operations(image, [operation], rng)
    assert edited.size == image.size and edited.mode == "RGB"
    assert not np.array_equal(np.asarray(edited), np.asarray(image))


def test_the_same_row_and_variant_give_the_same_bytes_and_others_differ() -> None:
    operations = ["flip", "rotate", "crop", "colorJitter", "blur"]
    random = RowRandomness(7, "image")

    def png(row: int, variant: int) -> bytes:
        return _encode(apply_operations(_product_photo(), operations, random.generator(row, f"image-{variant}")),
                       jpeg=False)[0]

    assert png(3, 0) == png(3, 0)
    assert len({png(3, 0), png(3, 1), png(4, 0)}) == 3
    jpeg, ext, content_type = _encode(_product_photo(), jpeg=True)
    assert (ext, content_type) == ("jpg", "image/jpeg") and Image.open(io.BytesIO(jpeg)).format == "JPEG"


def test_operations_run_in_an_order_drawn_per_variant() -> None:
    """crop and rotate do not commute: the result is the two applied in the drawn order, and across
    rows both orders occur."""
    random = RowRandomness(2, "image")
    orders = set()
    for row in range(12):
        order = random.generator(row, "image-0").permutation(2).tolist()
        orders.add(tuple(order))
        replay = random.generator(row, "image-0")
        replay.permutation(2)
        expected = _product_photo()
        for k in order:
            expected = OPERATIONS[("crop", "rotate")[k]](expected, replay)
        got = apply_operations(_product_photo(), ["crop", "rotate"], random.generator(row, "image-0"))
        assert np.array_equal(np.asarray(got), np.asarray(expected))
    assert orders == {(0, 1), (1, 0)}


def test_keys_derive_from_augmenter_row_and_variant_only() -> None:
    prefix = S3Uri.parse("s3://datasets/shoes/augmented/")
    key = image_key(prefix, "photos", 1234, 2, "jpg")
    assert str(key) == "s3://datasets/shoes/augmented/images/photos/000000001234-2.jpg"
    assert image_key(prefix, "photos", 1234, 2, "jpg") == key != image_key(prefix, "photos", 1234, 1, "jpg")
