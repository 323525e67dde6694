"""Accuracy over ranks and over awkward folders: torchrun with two gloo processes gives what one process gives,
every readable image counts once (no sampler padding, no walk through a symbolic-link loop), and
`python -m bench.accuracy` refuses bad arguments in one sentence before it evaluates anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

import zoo
from bench import accuracy
from bench.accuracy import DataError, check_data_dir, evaluate, list_images

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def make_uneven_folder(root: Path) -> int:
    """Three classes of 9, 8 and 10 noise images, a corrupt one, a link loop and a second path to one image; an
    odd total, so two ranks get shards of different sizes. Returns how many readable images there really are."""
    rng = np.random.default_rng(0)
    for name, count in (("a", 9), ("b", 8), ("c", 10)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (24, 28, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))  # a JPEG header, then nothing decodable
    os.symlink("..", root / "a" / "up")  # ImageFolder walks this 40 times over
    os.symlink("../a/0.png", root / "c" / "same.png")
    return 27


def biased_checkpoint(path: Path) -> Path:
    """test_convnext whose head favours the first 6 of its 1000 classes, so that on 3 classes of noise top-1 and
    top-5 are neither 0 nor 100 and a miscounted image would show."""
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same weights every run (any seed tried gives 10-30 % top-1, 70-97 % top-5)
        model = zoo.load("test_convnext")
    with torch.no_grad():
        model.get_classifier().bias[6:] = -1e4
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.e2e
def test_two_ranks_agree_with_one_and_count_every_image_once(tmp_path, capsys):
    data = tmp_path / "data"
    readable = make_uneven_folder(data)
    args = [
        "--model",
        "test_convnext",
        "--data",
        str(data),
        "--input-size",
        "32",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--checkpoint",
        str(biased_checkpoint(tmp_path / "head.pth")),
    ]
    out = tmp_path / "results" / "ws2.json"
    command = [
        str(TORCHRUN),
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "bench.accuracy",
        *args,
        "--workers",
        "2",
        "--out",
        str(out),
    ]  # decoding in DataLoader processes must not lose a skip
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    two_ranks = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert accuracy.main(args) == 0  # one process, while the two ranks start up
        stdout, stderr = two_ranks.communicate(timeout=180)
    finally:
        if two_ranks.poll() is None:  # torchrun passes SIGTERM on to its ranks
            two_ranks.terminate()
            two_ranks.wait(30)
    one = json.loads(capsys.readouterr().out)
    assert two_ranks.returncode == 0, stderr
    two = json.loads(stdout)  # one line: only rank 0 prints
    assert two == {**one, "world_size": 2} and json.loads(out.read_text()) == two
    assert one["world_size"] == 1 and one["eval_samples"] == readable and one["eval_skipped"] == 1
    assert 0 < one["top1"] < one["top5"] < 100
    assert one["accuracy_note"].startswith(f"1 unreadable image(s) skipped, e.g. {data / 'b' / 'broken.jpg'}. ")
    assert "2 symbolic link(s)" in one["accuracy_note"] and "each image was counted once" in one["accuracy_note"]


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("max_samples", [None, 5])
def test_shards_split_the_picked_images_without_padding(
    tmp_path, monkeypatch, world, max_samples, brightness_logits, make_image_folder
):
    """Each rank's share, summed, is the one-process result: uneven shards, --max-samples and skips included."""
    data = make_image_folder(tmp_path / "data", per_class=4)
    (data / "a" / "0.png").write_bytes(b"not a png")  # first, so that no simulated rank has it alone
    one = evaluate(brightness_logits, "test_vit", (32, 32), str(data), 2, max_samples, lambda t: t)
    monkeypatch.setattr(accuracy, "_over_ranks", lambda counts, first: (counts, first))  # each rank's own counts
    shares = []
    for rank in range(world):
        monkeypatch.setattr(accuracy, "_rank_and_world", lambda rank=rank: (rank, world))
        shares.append(evaluate(brightness_logits, "test_vit", (32, 32), str(data), 2, max_samples, lambda t: t))
    assert sum(s["eval_samples"] for s in shares) == one["eval_samples"] == (max_samples or 8) - 1
    assert sum(s["eval_skipped"] for s in shares) == one["eval_skipped"] == 1


def test_a_link_loop_counts_each_image_once_under_its_own_class(tmp_path, brightness_logits, make_image_folder):
    data = make_image_folder(tmp_path / "data")  # 3 dark images in a, 3 bright in b
    os.symlink("..", data / "a" / "up")  # the data folder itself
    os.symlink(".", data / "b" / "self")
    (data / "b" / "deeper").mkdir()
    os.symlink("../../a", data / "b" / "deeper" / "other")  # another class's folder: its images stay in a
    os.symlink("../b/0.png", data / "a" / "copy.png")  # another class's image: it stays in b
    # torchvision's ImageFolder walks each loop to the system's link limit: with several, it never ends
    listing = list_images(data)
    assert [(Path(p).relative_to(data).as_posix(), c) for p, c in listing.samples] == [
        ("a/0.png", 0),
        ("a/1.png", 0),
        ("a/2.png", 0),
        ("b/0.png", 1),
        ("b/1.png", 1),
        ("b/2.png", 1),
    ]
    assert len(listing.repeats) == 4
    result = evaluate(brightness_logits, "test_vit", (32, 32), str(data), 4, None, lambda t: t)
    assert result["eval_samples"] == 6 and result["top1"] == 100.0
    assert result["accuracy_note"].startswith("4 symbolic link(s) in the data folder led to images or folders already")


def test_linked_images_outside_the_folder_still_count(tmp_path, make_image_folder):
    elsewhere = make_image_folder(tmp_path / "elsewhere")
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(elsewhere / "a", data / "a")  # class folders that are links, as when a dataset is spread over disks
    (data / "b").mkdir()
    os.symlink(elsewhere / "b" / "0.png", data / "b" / "0.png")  # a subset made of links to image files
    os.symlink(elsewhere / "b" / "1.png", data / "b" / "1.png")
    os.symlink(elsewhere / "b", data / "b" / "more")  # a folder out of the data folder: never walked
    listing = list_images(data)
    samples = [(Path(p).relative_to(data).as_posix(), c) for p, c in listing.samples]
    assert samples == [("a/0.png", 0), ("a/1.png", 0), ("a/2.png", 0), ("b/0.png", 1), ("b/1.png", 1)]
    assert listing.outside == [str(data / "b" / "more")]


def test_listing_follows_image_folder_order_without_links(tmp_path, make_image_folder):
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


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "{data}/a/0.png"], "lies inside the input folder --data"),
        (["--out", "{data}/a/0.png/r.json"], "which is a file, not a folder"),
        (["--out", "{tmp}/file/r.json"], "which is a file, not a folder"),
        (["--out", "{tmp}"], "is a folder"),
        (["--pretrained", "--checkpoint", "{tmp}/file"], "not allowed with argument"),
        (["--checkpoint", "{tmp}/missing.pth"], "does not exist"),
        (["--input-size", "32", "64"], "one size"),
        (["--model", "no_such_model"], "Unknown model"),
    ],
)
def test_bad_arguments_are_one_sentence_before_anything_runs(
    tmp_path, capsys, monkeypatch, extra, message, make_image_folder
):
    data = make_image_folder(tmp_path / "data")
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(accuracy, "evaluate", None)  # reaching it would fail the test
    extra = [e.format(data=data, tmp=tmp_path) for e in extra]
    assert accuracy.main(["--model", "test_convnext", "--data", str(data), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert (data / "a" / "0.png").stat().st_size > 0


def test_accuracy_on_image_folder_pads_the_last_batch(tmp_path, brightness_logits, make_image_folder):
    data = make_image_folder(tmp_path / "data")
    seen_batches = []

    def forward(x):
        seen_batches.append(x.shape[0])
        return brightness_logits(x)

    result = evaluate(forward, "test_vit", (32, 32), str(data), 4, None, lambda t: t)
    assert result.pop("accuracy_note").startswith("The 2 class folder(s) were scored as the first 2 of the head's 3")
    assert result == {"top1": 100.0, "top5": 100.0, "eval_samples": 6, "eval_skipped": 0}
    assert seen_batches == [4, 4]  # 6 images: the second batch is padded to the static shape
    flipped = evaluate(lambda x: -brightness_logits(x), "test_vit", (32, 32), str(data), 4, 4, lambda t: t)
    assert flipped["eval_samples"] == 4 and flipped["top1"] == 0.0 and flipped["top5"] == 100.0


def test_a_corrupt_image_is_skipped_and_counted(tmp_path, brightness_logits, make_image_folder):
    data = make_image_folder(tmp_path / "data")
    (data / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))  # a JPEG header, then nothing decodable
    good = data / "b" / "cut.jpg"
    Image.fromarray(np.full((40, 48, 3), 200, dtype=np.uint8)).save(good)
    good.write_bytes(good.read_bytes()[:100])  # truncated mid-stream
    result = evaluate(brightness_logits, "test_vit", (32, 32), str(data), 4, None, lambda t: t)
    assert result["eval_samples"] == 6 and result["eval_skipped"] == 2 and result["top1"] == 100.0
    assert result["accuracy_note"].startswith("2 unreadable image(s) skipped")


def test_data_folder_checks(tmp_path, make_image_folder):
    with pytest.raises(DataError, match="does not exist"):
        check_data_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        check_data_dir(tmp_path / "empty")
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        check_data_dir(tmp_path / "noimg")
    check_data_dir(make_image_folder(tmp_path / "ok"))
