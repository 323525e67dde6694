"""Faults of what a run is asked, by class: model kwargs of every literal kind, sizes that are no numbers or cannot
fit, resumed rows measured with less than asked, unreadable images (decompression bombs included), an accuracy
--out beside a planted link or on a full disk, and a torchrun rank that stops."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo

from bench import accuracy, cli, env, runner
from bench.args import input_sizes
from common.cli import UsageError
from bench.results import append_row
from bench.runner import group_rows, measured_as_asked, run
from bench.spec import RowSpec, RunRequest, Settings

REPO = Path(__file__).resolve().parents[1]


def _one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and ". " not in message.rstrip(".")


# ----------------------------------------------------------------------------------------------- --model-kwargs


@pytest.mark.parametrize(
    "given, value",
    [
        ("out_indices=[1,2]", [1, 2]),
        ("out_indices=(1, 2)", [1, 2]),  # a tuple travels to the worker as JSON: a list
        ("pretrained_cfg_overlay={'crop_pct': 0.9}", {"crop_pct": 0.9}),
        ("drop_path_rate=0.1", 0.1),
        ("attn_impl=flex", "flex"),
        ("global_pool=None", None),
    ],
)
def test_model_kwargs_of_every_literal_kind_make_hashable_rows(given, value):
    kwargs = cli.parse_model_kwargs([given])
    assert list(kwargs.values()) == [value]
    spec = RowSpec("rmt_t", "eager", "fp32", 1, (64, 64), "cpu", model_kwargs=tuple(kwargs.items()))
    again = RowSpec.from_fields(json.loads(json.dumps(spec.fields())))  # as the worker and --resume read it back
    assert again == spec and hash(again) == hash(spec) and len({spec, again}) == 1
    assert again.key("cpu") == spec.key("cpu") and len(group_rows([spec, again])) == 1


@pytest.mark.parametrize("given", ["depths=[1,1,2,1]", "out_indices=(1, 2)", "cfg={'a': [1, {'b': 2}]}"])
def test_model_kwargs_holding_lists_pass_the_up_front_size_check(given, monkeypatch):
    """The runner's checks before any model is built (backend refusals, the model's input sizes) key on the kwargs;
    a list among them (timm's `depths=[...]`) is a key like any other value."""
    measured: list[list[RowSpec]] = []
    monkeypatch.setattr(runner._Run, "group", lambda self, specs: measured.append(specs))
    kwargs = tuple(cli.parse_model_kwargs([given]).items())
    specs = tuple(RowSpec("rmt_t", "eager", "fp32", b, (64, 64), "cpu", model_kwargs=kwargs) for b in (1, 2))
    run(RunRequest(specs, Settings(), "/dev/null", "t", progress=False))
    assert measured == [list(specs)]


@pytest.mark.parametrize("given", ["s={1, 2}", "b=b'x'", "c=1j", "n=[1e999]"])
def test_model_kwargs_a_row_cannot_record_are_one_sentence(given):
    with pytest.raises(UsageError) as refused:
        cli.parse_model_kwargs([given])
    message = str(refused.value)
    assert _one_sentence(message) and f"--model-kwargs {given}" in message and "cannot record" in message


def test_model_kwargs_that_are_no_literal_are_kept_as_the_string_given():
    assert cli.parse_model_kwargs(["f=float('nan')"]) == {"f": "float('nan')"}


# ----------------------------------------------------------------------------------------------- input sizes


@pytest.mark.parametrize("size", ["²", "2²4", "٣٢", "１２８", "3 ² 4", "64x²", "1e3", "-64", ""])
def test_sizes_that_are_no_plain_numbers_are_one_sentence(size):
    with pytest.raises(UsageError) as refused:
        input_sizes(size.split(" ") if " " in size else [size])
    assert _one_sentence(str(refused.value)) and "--input-size" in str(refused.value)


def test_a_size_beyond_the_memory_free_is_refused_up_front_with_the_estimate(monkeypatch):
    monkeypatch.setattr(env, "available_memory", lambda device: 2 * 2**30)
    base = ["--models", "rmt_t", "--device", "cpu", "--batch-size", "8"]
    with pytest.raises(UsageError) as refused:
        cli.parse_run_args([*base, "--input-size", "8192"])
    message = str(refused.value)
    weights = zoo.info("rmt_t").paper_params_m * 1e6
    need = 4 * (weights + 8 * 8192 * 8192 * (3 + 64 / 16)) / 2**30  # the weights, the input, one map, in fp32
    assert f"needs at least about {need:.1f} GiB (an estimate: weights, the input batch and one stride-4" in message
    assert "cpu has 2.0 GiB free" in message and _one_sentence(message)
    cli.parse_run_args([*base, "--input-size", "224"])  # what fits is not refused


# ----------------------------------------------------------------------------------------------- --resume


def test_resume_re_measures_a_row_timed_with_fewer_iterations_or_warm_up(tmp_path, monkeypatch):
    spec = RowSpec("test_convnext", "eager", "fp32", 1, (32, 32), "cpu")
    results = tmp_path / "r.jsonl"
    machine = env.device_name("cpu")
    measured: list[list[RowSpec]] = []
    # records the groups the runner would start workers for, instead of starting them
    monkeypatch.setattr(runner._Run, "group", lambda self, specs: measured.append(specs))
    asked = Settings(warmup=5, iters=20)
    cases = [(False, {"iters": 2, "warmup": 0}), (False, {"iters": 20, "warmup": 2}),
             (True, {"iters": 20, "warmup": 5}), (True, {"iters": 50, "warmup": 10}), (True, {})]  # fmt: skip
    for kept, timed in cases:
        results.unlink(missing_ok=True)
        append_row(results, {**spec.fields(), "status": "ok", "env": {"device_name": machine}, **timed})
        measured.clear()
        outcome = run(RunRequest((spec,), asked, str(results), "test", resume=True, progress=False))
        assert (measured == []) is kept, timed
        assert measured_as_asked({"iters": timed.get("iters"), "warmup": timed.get("warmup")}, asked) is kept
        assert len(outcome.rows) == (1 if kept else 0)


# ----------------------------------------------------------------------------------------------- images


def _folder(root: Path) -> Path:
    for name, level in (("a", 30), ("b", 220)):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((40, 48, 3), level + i, dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _brightness(x: torch.Tensor) -> torch.Tensor:
    m = x.float().mean(dim=(1, 2, 3))
    return torch.stack([-m, m, torch.zeros_like(m)], dim=1)


@pytest.mark.parametrize("bomb", ["error", "warning"])
def test_decompression_bombs_are_skipped_and_counted(bomb, tmp_path, monkeypatch):
    data = _folder(tmp_path / "data")
    side = 200 if bomb == "error" else 120  # 40000 pixels: over twice the limit (an error); 14400: a warning
    Image.fromarray(np.zeros((side, side, 3), dtype=np.uint8)).save(data / "a" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    result = accuracy.evaluate(_brightness, "test_convnext", (32, 32), str(data), 4, None, lambda x: x)
    assert result["eval_samples"] == 6 and result["eval_skipped"] == 1 and result["top1"] == 100.0
    assert "bomb.png" in result["accuracy_note"]


# ----------------------------------------------------------------------------------------------- accuracy --out


def test_accuracy_out_never_writes_through_a_planted_temporary_name(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    out, victim = tmp_path / "d" / "res.json", tmp_path / "victim"
    out.parent.mkdir()
    victim.write_text("precious")
    (out.parent / ".res.json.partial").symlink_to(victim)  # the fixed name an earlier version wrote through
    args = ["--model", "test_convnext", "--data", str(data), "--input-size", "32", "--device", "cpu"]
    assert accuracy.main([*args, "--out", str(out)]) == 0
    assert victim.read_text() == "precious" and json.loads(out.read_text())["eval_samples"] == 6
    assert sorted(p.name for p in out.parent.iterdir()) == [".res.json.partial", "res.json"]


def test_accuracy_out_on_a_full_disk_is_one_sentence_and_leaves_no_partial_file(tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        with pytest.raises(OSError):
            (disk / "filler").write_bytes(b"\0" * 128 * 1024)
        data = _folder(tmp_path / "data")
        args = ["--model", "test_convnext", "--data", str(data), "--input-size", "32", "--device", "cpu"]
        capsys.readouterr()
        assert accuracy.main([*args, "--out", str(disk / "res.json")]) == accuracy.EXIT_OUTPUT
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: Could not write") and "the disk is full" in err and _one_sentence(err[7:])
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# ----------------------------------------------------------------------------------------------- torchrun


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A rank that joins the group, then stops (SIGSTOP), as a rank does that a debugger or the OOM killer halts.
STOPPED_RANK = textwrap.dedent(
    """
    import datetime, os, signal, torch.distributed as dist
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    os.kill(os.getpid(), signal.SIGSTOP)
    """
)


@pytest.mark.e2e
@pytest.mark.parametrize("other", ["stops", "never starts"])
def test_a_rank_that_stops_ends_the_run_within_the_timeout(other, tmp_path):
    data = _folder(tmp_path / "data")
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "LOCAL_RANK": "0"}  # fmt: skip
    rank1 = None
    if other == "stops":
        rank1 = subprocess.Popen([sys.executable, "-c", STOPPED_RANK], env={**env, "RANK": "1"})
    try:
        args = ["--model", "test_convnext", "--data", str(data), "--input-size", "32", "--device", "cpu"]
        done = subprocess.run(
            [sys.executable, "-m", "bench.accuracy", *args, "--timeout-s", "3"],
            cwd=REPO,
            env={**env, "RANK": "0"},
            capture_output=True,
            text=True,
            timeout=240,  # far below torch's silent 30 minutes
        )
    finally:
        if rank1 is not None:
            rank1.kill()
            rank1.wait()
    assert done.returncode == 4, done.stderr
    err = done.stderr.strip().splitlines()[-1]
    assert err.startswith("error: rank 0 of 2: the other ranks did not answer within --timeout-s 3 s"), err
    assert "Traceback" not in done.stderr


def test_the_default_timeout_is_bounded_and_documented():
    assert accuracy.DEFAULT_TIMEOUT_S == 300
    assert datetime.timedelta(seconds=accuracy.DEFAULT_TIMEOUT_S) < datetime.timedelta(minutes=30)
    assert "--timeout-s" in accuracy._parser().format_help()  # the help text, without running the entry point
    assert "--timeout-s" in (REPO / "README.md").read_text()


# ---------------------------------------------------------------------------------------- arguments checked where given


@pytest.mark.parametrize(
    "given, flag", [("pretrained=True", "--pretrained"), ("features_only=True", "--features-only")]
)
def test_model_kwargs_the_harness_sets_from_its_own_flags_are_refused(given, flag):
    with pytest.raises(UsageError, match=f"is set by {flag}"):
        cli.parse_model_kwargs([given])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"drop_path_rate": 1.0},
        {"drop_path_rate": -0.1},
        {"drop_rate": 1.5},
        {"drop_path_rate": True},
        {"attn_drop_rate": "0.1"},
        {"num_classes": -1},
    ],  # fmt: skip
)
def test_rates_outside_zero_to_one_are_refused_wherever_given(kwargs):
    [(key, value)] = kwargs.items()
    with pytest.raises(UsageError, match=f"--model-kwargs: {key} must be"):
        cli.parse_model_kwargs([f"{key}={value!r}"])
    for name in ("rmt_t", "test_convnext"):  # the zoo's own and a timm model passed through
        with pytest.raises(ValueError, match=f"{key} must be"):
            zoo.load(name, **kwargs)
    import timm

    with pytest.raises(ValueError, match=f"{key} must be"):
        timm.create_model("rmt_t", **kwargs)  # the zoo's models registered with timm check too


@pytest.mark.parametrize("indices", [(1, 1), (1, -3), [0, 2, 2]])
def test_out_indices_naming_a_stage_twice_are_refused(indices):
    with pytest.raises(ValueError, match="more than once"):
        zoo.load("rmt_t", features_only=True, out_indices=indices)


def _converted(folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({k: v.contiguous() for k, v in zoo.load("rmt_t").state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def test_checkpoint_takes_what_zoo_load_takes_and_says_what_else_it_is(tmp_path, make_image_folder):
    folder = _converted(tmp_path / "converted")
    data = make_image_folder(tmp_path / "data")
    empty = tmp_path / "empty"
    empty.mkdir()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out = str(tmp_path / "r.jsonl")
    for path, says in [(folder, None), (empty, "is a folder with neither"), (tmp_path / "gone.pth", "does not exist"),
                       (fifo, "is not a file")]:  # fmt: skip
        bench_argv = ["--models", "rmt_t", "--checkpoint", str(path), "--out", out]
        accuracy_argv = ["--model", "rmt_t", "--data", str(data), "--checkpoint", str(path)]
        if says is None:
            assert cli.parse_run_args(bench_argv).checkpoints == {"rmt_t": str(folder.resolve())}
            assert accuracy.parse_args(accuracy_argv, 0, 1).checkpoint == str(folder)
            continue
        for parse in (lambda: cli.parse_run_args(bench_argv), lambda: accuracy.parse_args(accuracy_argv, 0, 1)):
            with pytest.raises(UsageError, match=says) as refused:
                parse()
            assert _one_sentence(str(refused.value)), str(refused.value)


def test_data_naming_a_file_says_it_is_no_folder(tmp_path):
    file = tmp_path / "val.tar"
    file.write_bytes(b"x")
    for parse in (
        lambda: cli.parse_run_args(["--models", "rmt_t", "--data", str(file), "--out", str(tmp_path / "r.jsonl")]),
        lambda: accuracy.parse_args(["--model", "rmt_t", "--data", str(file)], 0, 1),
    ):
        with pytest.raises(UsageError, match="is not a folder; give the folder that holds the class folders"):
            parse()


@pytest.mark.parametrize("org, env_org", [("../x", None), ("a--b", None), (None, "../x"), ("x/y", None)])
def test_convert_refuses_an_organisation_that_makes_no_repo_id(org, env_org, tmp_path, monkeypatch, capsys):
    from hub.__main__ import main as hub_main

    if env_org is not None:
        monkeypatch.setenv(zoo.RMT_HUB_ORG_ENV, env_org)
    source = tmp_path / "never-read.pth"
    source.write_bytes(b"")
    out = tmp_path / "out"
    argv = ["convert", str(source), str(out), "--model", "rmt_t", *(["--org", org] if org is not None else [])]
    assert hub_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not valid" in err and "--org" in err, err
    assert not out.exists()
