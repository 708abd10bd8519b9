"""``image``: new rows whose item image is an edited copy of the source row's.

The image column holds object keys: ``s3://bucket/key`` URIs, or bare keys in the source's bucket
(``spec.source.uri``). For each selected row the image is read once through ``build.store``; each of
its ``perRow`` variants applies every declared operation, in a random order, with random parameters:

* ``flip``: mirror left-right (product photos have no meaningful handedness; upside down does);
* ``rotate``: by -15..15 degrees, corners filled white (the usual catalogue background);
* ``crop``: a random crop of 50-100 % of the area (aspect ratio 3:4..4:3), scaled back to the
  original size, as torchvision's RandomResizedCrop;
* ``colorJitter``: brightness, contrast and saturation each times 0.7..1.3;
* ``blur``: Gaussian blur of radius 0.5..2 pixels;
* ``grayscale``: to grey (kept as RGB, so every output image has the same mode).

Order and parameters come from the row's random stream per variant, so a variant is the same in
every run with the seed. The result is written to
``<spec.output.uri>images/<augmenter name>/<source row, 12 digits>-<variant>.<ext>``: a retried shard
overwrites its own objects instead of adding new ones. JPEG sources are written as JPEG (quality 90),
everything else as PNG. The new image column value has the source value's form: a bare key when the
source value was a bare key and the output is in the source's bucket, an ``s3://`` URI otherwise.

A row whose image is unset, missing from the store, or not a decodable image produces no row: it is
reported as ``unusable`` (reasons ``no image``, ``image not found``, ``image not decodable``) and
the manifest counts it under the ``notGenerated`` drops of the augmenter, with the key in the log.
``flip`` and ``grayscale`` have no parameters: asked alone with ``perRow`` above 1, they make
identical variants.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps, UnidentifiedImageError

from sampleforge.api.augmenters import ImageAugmenter as ImageSpec
from sampleforge.jobs.common.outage import StorageError
from sampleforge.jobs.common.storage import ObjectStore, S3Uri

from .errors import ConfigError
from .protocol import BatchPlan, GeneratedRow
from .registry import BuildContext, register_row_augmenter
from .rows import RowBatch

log = logging.getLogger(__name__)

__all__ = ["OPERATIONS", "ImageAugmenter", "apply_operations", "image_key"]

MAX_ROTATION = 15.0
CROP_AREA = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = (0.7, 1.3)
BLUR_RADIUS = (0.5, 2.0)
JPEG_QUALITY = 90
_WHITE = (255, 255, 255)


def _flip(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageOps.mirror(image)


def _rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    angle = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    return image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=_WHITE)


def _crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    area = width * height * float(rng.uniform(*CROP_AREA))
    ratio = float(np.exp(rng.uniform(np.log(CROP_RATIO[0]), np.log(CROP_RATIO[1]))))
    w = round(min(float(width), max(1.0, float(np.sqrt(area * ratio)))))
    h = round(min(float(height), max(1.0, float(np.sqrt(area / ratio)))))
    left = int(rng.integers(0, width - w + 1))
    top = int(rng.integers(0, height - h + 1))
    return image.resize((width, height), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))


def _color_jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(float(rng.uniform(*JITTER)))
    return image


def _blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(float(rng.uniform(*BLUR_RADIUS))))


def _grayscale(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageOps.grayscale(image).convert("RGB")


OPERATIONS = {"flip": _flip, "rotate": _rotate, "crop": _crop, "colorJitter": _color_jitter, "blur": _blur,
              "grayscale": _grayscale}


def apply_operations(image: Image.Image, operations: Sequence[str], rng: np.random.Generator) -> Image.Image:
    """``image`` (RGB) with every operation applied, in an order drawn from ``rng``."""
    out = image
    for k in rng.permutation(len(operations)).tolist():
        out = OPERATIONS[operations[k]](out, rng)
    return out


def image_key(prefix: S3Uri, augmenter: str, source_row: int, variant: int, ext: str) -> S3Uri:
    """Where variant ``variant`` of ``source_row``'s image goes: the same object on every retry."""
    return prefix.join("images", augmenter, f"{source_row:012d}-{variant}.{ext}")


def _encode(image: Image.Image, jpeg: bool) -> tuple[bytes, str, str]:
    """Bytes, extension and content type; fixed encoder settings, so the same pixels give the same bytes."""
    buffer = io.BytesIO()
    if jpeg:
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
        return buffer.getvalue(), "jpg", "image/jpeg"
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue(), "png", "image/png"


class ImageAugmenter:
    """Edits item images (see the module docstring)."""

    label_rule = "keep"

    def __init__(self, name: str, operations: Sequence[str], column: str, store: ObjectStore, source_bucket: str,
                 output: S3Uri) -> None:
        self.name = name
        self.operations = tuple(operations)
        self.column = column
        self.store = store
        self.source_bucket = source_bucket
        self.output = output

    def _locate(self, value: str) -> S3Uri:
        return S3Uri.parse(value) if value.startswith("s3://") else S3Uri(self.source_bucket, value.lstrip("/"))

    def _load(self, value: Any, row: int) -> tuple[Image.Image | None, str | None, bool]:
        """(RGB image, None, is JPEG) or (None, reason, False)."""
        if not value:
            return None, "no image", False
        try:
            uri = self._locate(str(value))
            data = self.store.read_bytes(uri)
        except (StorageError, ValueError) as err:
            log.warning("image not found", extra={"augmenter": self.name, "row": row, "image": value,
                                                  "error": str(err)})
            return None, "image not found", False
        try:
            with Image.open(io.BytesIO(data)) as opened:
                jpeg = opened.format == "JPEG"
                image = opened.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
            log.warning("image not decodable", extra={"augmenter": self.name, "row": row, "image": value,
                                                      "error": str(err)})
            return None, "image not decodable", False
        return image, None, jpeg

    def _value(self, source_value: str, uri: S3Uri) -> str:
        """The new column value, in the form of the source's (see the module docstring)."""
        if not source_value.startswith("s3://") and uri.bucket == self.source_bucket:
            return uri.key
        return str(uri)

    def augment(self, batch: RowBatch, plan: BatchPlan) -> list[GeneratedRow]:
        out: list[GeneratedRow] = []
        per_row = plan.per_row or 1
        for i in plan.selected_indices():
            row = int(batch.row_ids[i])
            value = batch.value(self.column, i)
            image, reason, jpeg = self._load(value, row)
            if image is None:
                out.append(GeneratedRow(row, {}, self.label_rule, 0, unusable=reason))
                continue
            for variant in range(per_row):
                edited = apply_operations(image, self.operations, plan.random.generator(row, f"image-{variant}"))
                data, ext, content_type = _encode(edited, jpeg)
                uri = image_key(self.output, self.name, row, variant, ext)
                self.store.write_bytes(uri, data, content_type)
                out.append(GeneratedRow(row, {self.column: self._value(str(value), uri)}, self.label_rule, variant))
        return out


@register_row_augmenter(ImageSpec)
def _build(entry: ImageSpec, build: BuildContext) -> ImageAugmenter:
    column = build.roles.image
    if column is None:  # the API server rejects this already; a spec read from elsewhere may not be checked
        raise ConfigError(f"{build.field_path} has type image but spec.source.columns.image is unset; name the "
                          "column with the image keys there")
    if build.store is None:
        raise ConfigError(f"{build.field_path}: image augmentation reads and writes images in the object store, "
                          "and this run has none configured; set spec.storage")
    operations = list(dict.fromkeys(entry.operations))
    return ImageAugmenter(entry.display_name(), operations, column, build.store,
                          S3Uri.parse(build.spec.source.uri).bucket, S3Uri.parse(build.spec.output.uri))
