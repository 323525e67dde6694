"""Inputs never block or wander: only regular files are opened (a FIFO named like an image, or given as
--model-list, would block forever), links to folders out of the data folder or in a loop are skipped and counted,
and the walk covers each real folder once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import cli
from bench.accuracy import _Images, check_data_dir, evaluate, list_images
from common.cli import EXIT_USAGE


def _evaluate(data: Path, brightness_logits) -> dict:
    return evaluate(brightness_logits, "test_vit", (32, 32), str(data), 2, None, lambda t: t)


@pytest.mark.parametrize("where", ["class folder", "sub-folder", "link to it"])
def test_a_fifo_named_like_an_image_is_never_opened(where, tmp_path, make_image_folder, brightness_logits):
    data = make_image_folder(tmp_path / "data")
    fifo = data / "a" / "stuck.png" if where == "class folder" else tmp_path / "stuck.png"
    if where == "sub-folder":
        (data / "b" / "sub").mkdir()
        fifo = data / "b" / "sub" / "stuck.png"
    os.mkfifo(fifo)
    if where == "link to it":
        os.symlink(fifo, data / "b" / "stuck.png")
    listing = list_images(data)
    assert len(listing.samples) == 6 and len(listing.odd) == 1
    result = _evaluate(data, brightness_logits)  # would block forever on the FIFO
    assert result["eval_samples"] == 6 and "1 entries named like images are no regular files" in result["accuracy_note"]


def test_an_image_replaced_by_a_fifo_after_listing_is_skipped_not_opened(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "data")
    path = str(data / "a" / "0.png")
    os.unlink(path)
    os.mkfifo(path)
    _, _, image, _ = _Images([(0, path, 0)], lambda im: im)[0]
    assert image is None


@pytest.mark.parametrize("target", ["/", "parent of data", "a sibling folder"])
def test_a_link_to_a_folder_out_of_the_data_folder_is_not_walked(target, tmp_path, make_image_folder,
                                                                 brightness_logits):  # fmt: skip
    data = make_image_folder(tmp_path / "data")
    elsewhere = make_image_folder(tmp_path / "elsewhere")
    to = {"/": Path("/"), "parent of data": tmp_path, "a sibling folder": elsewhere}[target]
    os.symlink(to, data / "a" / "escape", target_is_directory=True)
    listing = list_images(data)
    assert len(listing.samples) == 6 and listing.outside == [str(data / "a" / "escape")]
    check_data_dir(data)
    assert (
        "1 symbolic link(s) to folders out of the data folder were skipped"
        in _evaluate(data, brightness_logits)["accuracy_note"]
    )


def test_links_inside_the_data_folder_and_loops_are_walked_once(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "data")
    os.symlink(data, data / "a" / "loop", target_is_directory=True)
    os.symlink(data / "b", data / "a" / "to_b", target_is_directory=True)
    os.symlink(data / "a", data / "a" / "self", target_is_directory=True)
    listing = list_images(data)
    assert len(listing.samples) == 6 and not listing.outside and listing.repeats


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_model_list_that_is_no_regular_file_is_one_sentence(kind, tmp_path, capsys):
    path = {"fifo": tmp_path / "models.txt", "folder": tmp_path, "device": Path("/dev/zero")}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    assert cli.main(["--model-list", str(path), "--out", str(tmp_path / "r.jsonl")]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--model-list {str(path)!r} cannot be read" in err, err
