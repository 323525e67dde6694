"""Images are read as they are: every accuracy input goes through one conversion (`accuracy.to_rgb`), which scales
16-bit grey instead of clipping it and takes CMYK, palette (with a transparent index), grey, 1-bit and alpha images
to the RGB they show."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench.accuracy import _Images, load_rgb


def _grey16(value: int) -> Image.Image:
    return Image.fromarray(np.full((4, 4), value, dtype=np.uint16))


def _palette() -> Image.Image:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    image.info["transparency"] = bytes([0, 128] + [255] * 254)  # per-index alpha: PIL warns converting it to RGB
    return image


# (how the file is made, its suffix, the RGB of its pixel (0, 0) as read)
CASES = {
    "16-bit grey, full": (lambda: _grey16(65535), "png", (255, 255, 255)),
    "16-bit grey, half": (lambda: _grey16(32896), "png", (128, 128, 128)),
    "16-bit grey, dark": (lambda: _grey16(257 * 10), "tiff", (10, 10, 10)),
    "CMYK white": (lambda: Image.new("CMYK", (4, 4), (0, 0, 0, 0)), "jpg", (255, 255, 255)),
    "CMYK cyan": (lambda: Image.new("CMYK", (4, 4), (255, 0, 0, 0)), "tiff", (0, 255, 255)),
    "palette with transparency": (_palette, "png", (200, 100, 50)),
    "alpha dropped": (lambda: Image.new("RGBA", (4, 4), (10, 20, 30, 0)), "png", (10, 20, 30)),
    "grey with alpha": (lambda: Image.new("LA", (4, 4), (90, 255)), "png", (90, 90, 90)),
    "1-bit": (lambda: Image.new("1", (4, 4), 1), "png", (255, 255, 255)),
}


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("case", CASES)
def test_every_image_kind_reads_as_the_rgb_it_shows(case, tmp_path):
    make, suffix, expected = CASES[case]
    path = tmp_path / f"x.{suffix}"
    make().save(path)
    image = load_rgb(str(path))
    assert image.mode == "RGB"
    got = image.getpixel((0, 0))
    assert max(abs(a - b) for a, b in zip(got, expected)) <= (2 if suffix == "jpg" else 0), got


def test_the_accuracy_loader_reads_through_the_conversion(tmp_path):
    path = tmp_path / "x.png"
    _grey16(32896).save(path)
    _, _, image, _ = _Images([(0, str(path), 0)], lambda im: im)[0]
    assert image.getpixel((0, 0)) == (128, 128, 128)
