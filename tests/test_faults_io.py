"""Faults of the files the harness writes, by class: appends under a full disk, a file-size limit and a second
writer (only one's own torn tail is ever cut), outputs in a hostile folder (planted links, fixed temporary names),
an existing image as --plot, and shards found by exact name with FIFOs and folders beside them skipped."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import cli, suite
from bench.args import EXIT_OUTPUT
from common import paths
from common.cli import EXIT_USAGE
from common.paths import WriteError, append_bytes, check_output_path, OutputPathError, write_atomic
from bench.results import append_row, iter_results, load_results, result_files

REPO = Path(__file__).resolve().parents[1]


def _row(**fields) -> dict:
    """A row the reader accepts, with `fields` added."""
    return {
        "model": "rmt_t",
        "backend": "eager",
        "precision": "fp32",
        "batch_size": 1,
        "input_size": [224, 224],
        "device": "cpu",
        "status": "ok",
        **fields,
    }


def _lines(path: Path) -> list[str]:
    return path.read_bytes().decode().split("\n")


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 256 KiB tmpfs that fills up (needs root: mount)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# A writer process: appends rows of varying length until an append fails, printing the id of each row it was told
# was written. With LIMIT set, it runs under that file-size limit (ulimit -f), SIGXFSZ ignored as the CLIs do.
WRITER = textwrap.dedent(
    """
    import os, resource, sys
    from common.paths import WriteError, ignore_file_size_signal
    from bench.results import append_row
    path, who, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if limit:
        ignore_file_size_signal()
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    row = {"model": "m", "backend": "eager", "precision": "fp32", "batch_size": 1, "input_size": [8, 8],
           "device": "cpu", "status": "ok"}
    for n in range(100000):
        try:
            append_row(path, {**row, "id": f"{who}-{n}", "pad": "x" * (200 + 97 * (n % 23))})
        except WriteError as exc:
            print("FAILED", exc, flush=True)
            sys.exit(0)
        print(f"{who}-{n}", flush=True)
    """
)


def _concurrent_writers(path: Path, limit: int, writers: int = 4) -> tuple[list[str], list[str]]:
    """(ids reported written, failure lines) of `writers` processes appending to `path` at once."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), f"w{i}", str(limit)], stdout=subprocess.PIPE, text=True, env=env
        )
        for i in range(writers)
    ]
    outputs = [p.communicate(timeout=240)[0].splitlines() for p in procs]
    assert [p.returncode for p in procs] == [0] * writers  # no writer killed (SIGXFSZ) or crashed
    reported = [line for out in outputs for line in out if not line.startswith("FAILED")]
    failures = [line for out in outputs for line in out if line.startswith("FAILED")]
    return reported, failures


def _assert_whole(path: Path, reported: list[str]) -> None:
    """Every row reported written is in the file exactly once, whole; no partial line is left."""
    lines = [line for line in _lines(path) if line]
    assert path.read_bytes().endswith(b"\n")
    ids = [json.loads(line)["id"] for line in lines]  # every line parses: nothing torn
    assert sorted(ids) == sorted(reported)


@pytest.mark.e2e
def test_concurrent_writers_on_a_full_disk_keep_every_row_reported_written(small_disk):
    path = small_disk / "results.jsonl"
    reported, failures = _concurrent_writers(path, limit=0)
    assert len(failures) == 4 and all("the disk is full" in f for f in failures)
    assert len(reported) > 50
    _assert_whole(path, reported)


@pytest.mark.e2e
def test_concurrent_writers_under_a_file_size_limit_keep_every_row_reported_written(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(json.dumps(_row(id="before")).encode() + b"\n")
    reported, failures = _concurrent_writers(path, limit=200_000)
    assert len(failures) == 4 and all("file-size limit" in f for f in failures)
    assert os.path.getsize(path) <= 200_000
    _assert_whole(path, ["before", *reported])


def test_a_short_write_cuts_only_its_own_bytes(tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    append_row(path, _row(id="a"))
    before = path.read_bytes()
    real_write = os.write
    monkeypatch.setattr(paths.os, "write", lambda fd, data: real_write(fd, bytes(data)[:10]))  # the disk filled
    with pytest.raises(WriteError, match=r"\(the disk is full\); the rows written before it are kept"):
        append_row(path, _row(id="b"))
    monkeypatch.undo()
    assert path.read_bytes() == before


def test_bytes_another_writer_appended_after_a_torn_write_are_never_cut(tmp_path, monkeypatch):
    """A writer that does not take the lock (another tool) appended after our torn half: those bytes are not ours,
    so nothing is cut, not even our half (cutting it would take theirs too)."""
    path = tmp_path / "r.jsonl"
    append_row(path, _row(id="a"))
    real_write = os.write
    foreign = b'{"foreign": 1}\n'

    def torn_then_foreign(fd, data):
        real_write(fd, bytes(data)[:20])
        with open(path, "ab") as other:
            other.write(foreign)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(paths.os, "write", torn_then_foreign)
    with pytest.raises(WriteError):
        append_row(path, _row(id="b"))
    monkeypatch.undo()
    assert path.read_bytes().endswith(foreign)
    append_row(path, _row(id="c"))  # starts on its own line: the damage stays in one line
    assert [r["id"] for r in load_results(path, quiet=True)] == ["a", "c"]


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EFBIG, errno.EDQUOT])
def test_an_append_that_fails_whole_is_one_sentence_and_leaves_the_file(error, tmp_path, monkeypatch):
    path = tmp_path / "r.jsonl"
    append_row(path, _row(id="a"))
    before = path.read_bytes()

    def fail(fd, data):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(paths.os, "write", fail)
    with pytest.raises(WriteError) as raised:
        append_row(path, _row(id="b"))
    monkeypatch.undo()
    message = str(raised.value)
    assert message.endswith(".") and "\n" not in message and str(path) in message
    assert path.read_bytes() == before


@pytest.mark.parametrize("kind", ["symlink", "fifo", "folder"])
def test_an_append_never_follows_a_link_or_opens_a_non_file(kind, tmp_path):
    path, target = tmp_path / "r.jsonl", tmp_path / "elsewhere"
    target.write_text("untouched\n")
    if kind == "symlink":
        path.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    with pytest.raises(WriteError):
        append_bytes(path, b"row\n")
    assert target.read_text() == "untouched\n"


# ----------------------------------------------------------------------------------------------- whole files


def test_write_atomic_replaces_a_planted_link_instead_of_following_it(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "table.md").symlink_to(victim)
    write_atomic(out / "table.md", "new table\n")
    assert victim.read_text() == "precious"
    assert not (out / "table.md").is_symlink() and (out / "table.md").read_text() == "new table\n"
    assert sorted(p.name for p in out.iterdir()) == ["table.md"]  # no temporary file left


def test_write_atomic_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")

    def half_then_full(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError, match=r"\(the disk is full\); nothing was left half-written"):
        write_atomic(path, half_then_full)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


def test_suite_outputs_replace_links_planted_in_the_folder(tmp_path):
    out, victim = tmp_path / "suite", tmp_path / "victim"
    out.mkdir()
    victim.write_text("precious")
    for name in ("table.md", "env.json", "plot.png"):
        (out / name).symlink_to(victim)
    rows = [_row(throughput_ips=10.0, top1=80.0, env={"device_name": "cpu"})]
    suite.write_outputs(rows, out, "cpu")
    assert victim.read_text() == "precious"
    assert not any((out / n).is_symlink() for n in ("table.md", "env.json", "plot.png"))
    assert (out / "plot.png").read_bytes().startswith(b"\x89PNG")


def test_outputs_given_as_links_are_refused_before_anything_runs(tmp_path):
    target = tmp_path / "r.jsonl"
    target.write_text("")
    (tmp_path / "link.jsonl").symlink_to(target)
    with pytest.raises(OutputPathError, match="never written through links"):
        check_output_path(tmp_path / "link.jsonl", "--out", text_file=True)


def test_report_plot_overwrites_an_image_that_is_no_input(tmp_path, capsys):
    results, png = tmp_path / "r.jsonl", tmp_path / "p.png"
    append_row(results, _row(throughput_ips=10.0, top1=80.0))
    for _ in range(2):  # the README's command works twice
        assert cli.main(["report", str(results), "--plot", str(png)]) == 0
        assert png.read_bytes().startswith(b"\x89PNG")
    assert cli.main(["report", str(results), "--plot", str(results)]) == EXIT_USAGE  # an input: refused
    assert "same file" in capsys.readouterr().err


def test_report_plot_on_a_full_disk_is_one_sentence_and_leaves_no_empty_image(small_disk, tmp_path, capsys):
    results = tmp_path / "r.jsonl"
    append_row(results, _row(throughput_ips=10.0, top1=80.0))
    (small_disk / "filler").write_bytes(b"\0" * (256 * 1024 - 8192))
    with pytest.raises(OSError):  # fill what is left to the last byte
        with open(small_disk / "filler2", "wb") as f:
            f.write(b"\0" * 256 * 1024)
    capsys.readouterr()
    assert cli.main(["report", str(results), "--plot", str(small_disk / "p.png")]) == EXIT_OUTPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Could not write") and "the disk is full" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "filler2"]


@pytest.mark.e2e
def test_bench_under_a_file_size_limit_keeps_rows_prints_them_and_says_one_sentence(tmp_path):
    """The first row fits under `ulimit -f`, the second does not: exit 1, one sentence, the first row in the file
    and in the table, no torn line."""
    out = tmp_path / "r.jsonl"
    base = [sys.executable, "bench.py", "--models", "test_convnext", "--input-size", "32", "--iters", "1"]
    base += ["--warmup", "0", "--no-flops", "--device", "cpu", "--threads", "1", "--quiet", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.run([*base, "--batch-size", "1"], cwd=REPO, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    size = out.stat().st_size  # one row
    out.unlink()

    def limit():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (size * 3 // 2, size * 3 // 2))

    done = subprocess.run(
        [*base, "--batch-size", "2", "1"], cwd=REPO, env=env, capture_output=True, text=True, preexec_fn=limit
    )
    assert done.returncode == EXIT_OUTPUT, done.stderr
    err = done.stderr.strip().splitlines()
    assert err[-1].startswith("error: Could not append a row to") and "file-size limit" in err[-1]
    assert "Traceback" not in done.stderr
    rows = load_results(out)
    assert [r["batch_size"] for r in rows] == [2] and out.read_bytes().endswith(b"\n")
    assert "test_convnext" in done.stdout  # the table of what was kept


# ----------------------------------------------------------------------------------------------- shards


def test_shards_are_found_by_exact_name_not_as_glob_patterns(tmp_path):
    brackets = tmp_path / "res[1].jsonl"
    append_row(brackets.with_name("res[1].shard-a-0.jsonl"), _row(id="mine"))
    append_row(tmp_path / "resX.shard-a-0.jsonl", _row(id="another file's"))
    assert [r["id"] for r in iter_results(brackets)] == ["mine"]
    append_row(tmp_path / "res?.jsonl", _row(id="question"))
    assert [r["id"] for r in iter_results(tmp_path / "res?.jsonl")] == ["question"]


def test_a_fifo_or_folder_named_like_a_shard_is_skipped_with_a_note(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    append_row(path, _row(id="main"))
    append_row(tmp_path / "results.shard-b-0.jsonl", _row(id="shard"))
    os.mkfifo(tmp_path / "results.shard-x-0.jsonl")
    (tmp_path / "results.shard-y-0.jsonl").mkdir()
    signal.alarm(20)  # opening the FIFO would block forever
    try:
        rows = load_results(path)
    finally:
        signal.alarm(0)
    assert [r["id"] for r in rows] == ["main", "shard"]
    err = capsys.readouterr().err
    assert "skipped 2 entries" in err and "results.shard-x-0.jsonl" in err and "not a regular file" in err
    assert result_files(path, quiet=True) == [path, tmp_path / "results.shard-b-0.jsonl"]
    fifo = tmp_path / "other.jsonl"
    os.mkfifo(fifo)
    signal.alarm(20)
    try:
        with pytest.raises(OSError, match="not a regular file"):
            load_results(fifo, quiet=True)
    finally:
        signal.alarm(0)


def test_suite_on_a_full_disk_prints_the_kept_rows_and_one_sentence(tmp_path, monkeypatch, capsys):
    kept = [_row(id="kept", throughput_ips=3.0)]

    def full(*args, **kwargs):
        raise WriteError(
            "Could not append a row to r.jsonl (the disk is full); the rows written before it are kept.", kept
        )

    monkeypatch.setattr(suite, "run", full)
    assert suite.main(["--dry-run", "--out", str(tmp_path / "s"), "--quiet"]) == EXIT_OUTPUT
    captured = capsys.readouterr()
    assert "rmt_t" in captured.out  # the table of what was kept
    assert (
        captured.err.strip()
        == "error: Could not append a row to r.jsonl (the disk is full); the rows written before it are kept."
    )
