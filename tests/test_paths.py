"""Output paths are refused in one sentence before anything is written: the class of fault, not one path."""

from __future__ import annotations

import os

import pytest

from common.paths import OutputPathError, check_distinct, check_output_path


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputPathError, match="named pipe"):
        check_output_path(fifo, "--out", text_file=True)  # opening it to read would block forever


def test_device_is_refused():
    with pytest.raises(OutputPathError, match="character device"):
        check_output_path("/dev/null", "--out", text_file=True)


def test_dangling_and_looping_links_are_refused(tmp_path):
    dangling = tmp_path / "r.jsonl"
    dangling.symlink_to(tmp_path / "missing" / "r.jsonl")
    with pytest.raises(OutputPathError, match="does not exist"):
        check_output_path(dangling, "--out", text_file=True)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(OutputPathError):
        check_output_path(loop, "--out")


def test_folder_and_file_kinds(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputPathError, match="is a file; give a folder"):
        check_output_path(tmp_path / "f", "--out", folder=True)
    with pytest.raises(OutputPathError, match="is a folder"):
        check_output_path(tmp_path, "--out")
    check_output_path(tmp_path / "new" / "deeper" / "r.jsonl", "--out", text_file=True)  # created on first write


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
@pytest.mark.parametrize("path", ["/proc/r.jsonl", "/proc/missing/deeper/r.jsonl"])
def test_a_folder_that_takes_no_new_files_is_refused_even_for_root(path, tmp_path):
    """access() grants root everything, /proc included, so a run as root would measure, then fail to write."""
    with pytest.raises(OutputPathError, match=r"cannot be created: the folder '/proc' (is not writable|takes no new)"):
        check_output_path(path, "--out", text_file=True)
    check_output_path(tmp_path / "r.jsonl", "--out", text_file=True)
    assert list(tmp_path.iterdir()) == []  # the probe that proved the folder writable is gone


def test_same_file_by_name_link_or_hard_link(tmp_path):
    results = tmp_path / "r.jsonl"
    results.write_text("")
    with pytest.raises(OutputPathError, match="same file"):
        check_distinct({"--out": results, "--plot": tmp_path / "." / "r.jsonl"})
    (tmp_path / "link").symlink_to(results)
    with pytest.raises(OutputPathError, match="would destroy an input"):
        check_distinct({"--plot": tmp_path / "link"}, {"RESULTS": results})
    os.link(results, tmp_path / "hard")
    with pytest.raises(OutputPathError, match="same file"):
        check_distinct({"--plot": tmp_path / "hard"}, {"RESULTS": results})
    check_distinct({"--out": results, "--plot": tmp_path / "p.png"}, {"--data": tmp_path / "data"})


def test_input_inside_an_output_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputPathError, match="lies inside OUT_DIR"):
        check_distinct({"OUT_DIR": out}, {"--results": out / "results.jsonl"})
    check_distinct({"OUT_DIR": out}, {"--results": tmp_path / "results.jsonl"})


def test_output_inside_an_input_folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(OutputPathError, match="lies inside the input folder --data"):
        check_distinct({"--out": data / "val.json"}, {"--data": data})
