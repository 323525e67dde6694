"""Accuracy over awkward folders: every readable image counts once, with no walk through a symbolic-link loop."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from bench.accuracy import DataError, check_data_dir, evaluate, list_images
from test_bench import _brightness_logits, make_image_folder


def test_a_link_loop_counts_each_image_once_under_its_own_class(tmp_path):
    data = make_image_folder(tmp_path / "data")  # 3 dark images in a, 3 bright in b
    os.symlink("..", data / "a" / "up")  # the data folder itself
    os.symlink(".", data / "b" / "self")
    (data / "b" / "deeper").mkdir()
    os.symlink("../../a", data / "b" / "deeper" / "other")  # another class's folder: its images stay in a
    os.symlink("../b/0.png", data / "a" / "copy.png")  # another class's image: it stays in b
    # torchvision's ImageFolder walks each loop to the system's link limit: with several, it never ends
    listing = list_images(data)
    assert [(Path(p).relative_to(data).as_posix(), c) for p, c in listing.samples] == [
        ("a/0.png", 0), ("a/1.png", 0), ("a/2.png", 0), ("b/0.png", 1), ("b/1.png", 1), ("b/2.png", 1)]
    assert len(listing.repeats) == 4
    result = evaluate(_brightness_logits, "test_vit", (32, 32), str(data), 4, None, lambda t: t)
    assert result["eval_samples"] == 6 and result["top1"] == 100.0
    assert result["accuracy_note"].startswith("4 symbolic link(s) in the data folder led to images or folders already")


def test_linked_images_outside_the_folder_still_count(tmp_path):
    elsewhere = make_image_folder(tmp_path / "elsewhere")
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(elsewhere / "a", data / "a")  # class folders that are links, as when a dataset is spread over disks
    (data / "b").mkdir()
    os.symlink(elsewhere / "b" / "0.png", data / "b" / "0.png")
    os.symlink(elsewhere / "b", data / "b" / "more")
    samples = [(Path(p).relative_to(data).as_posix(), c) for p, c in list_images(data).samples]
    assert samples == [("a/0.png", 0), ("a/1.png", 0), ("a/2.png", 0),
                       ("b/0.png", 1), ("b/more/1.png", 1), ("b/more/2.png", 1)]


def test_listing_follows_image_folder_order_without_links(tmp_path):
    """So that --max-samples picks the same images as before links were handled."""
    data = make_image_folder(tmp_path / "data", per_class=2)
    for sub in ("a/x", "a/x y", "a/x/z", "b/A"):
        (data / sub).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / sub / "p.PNG")
    (data / "a" / "notes.txt").write_text("not an image")
    (data / "empty").mkdir()
    assert list_images(data).samples == ImageFolder(str(data), allow_empty=True).samples


def test_data_check_ends_on_a_loop_without_images(tmp_path):
    (tmp_path / "data" / "cls").mkdir(parents=True)
    os.symlink(".", tmp_path / "data" / "cls" / "again")
    os.symlink("..", tmp_path / "data" / "cls" / "up")
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="no images"):
        check_data_dir(tmp_path / "data")
    assert time.perf_counter() - t0 < 1
