"""Faults of the Hub layer, by class: a repo's config.json that points the loader elsewhere, results published
with host names and local paths or public by default, weights published to a repo the project does not own, and a
conversion whose OUT_DIR changes meanwhile, is killed, or meets a full disk. Offline: a Hub cache built here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import timm
import torch
from safetensors.torch import save_file

import zoo
from common.provenance import REPO_ROOT
from hub.__main__ import main as hub_main
from hub.convert import ConversionError, convert
from hub.publish import PublishError, plan_upload
from hub.results import published_rows, push_results
from zoo import CheckpointError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path, dict, dict]:
    """rmt_t weights for a Hub repo (bytes and state) and other weights in a local file (path and state)."""
    folder = tmp_path_factory.mktemp("weights")
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append({k: v.contiguous() for k, v in zoo.load("rmt_t").state_dict().items()})
    save_file(states[0], str(folder / "repo.safetensors"))
    save_file(states[1], str(folder / "elsewhere.safetensors"))
    return (folder / "repo.safetensors").read_bytes(), folder / "elsewhere.safetensors", states[0], states[1]


def _same(model: torch.nn.Module, state: dict) -> bool:
    return all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.fixture
def repo_with_config(put_in_cache) -> Callable[..., None]:
    def put(cache: Path, repo_id: str, weights: bytes, **pretrained_cfg) -> None:
        """An rmt_t repo in the offline cache whose config.json's pretrained_cfg carries `pretrained_cfg`."""
        config = {
            "architecture": "rmt_t",
            "num_classes": 1000,
            "pretrained_cfg": {**zoo.info("rmt_t").pretrained_cfg(), **pretrained_cfg},
        }
        put_in_cache(cache, repo_id, {"model.safetensors": weights, "config.json": json.dumps(config).encode()})

    return put


# ---------------------------------------------------------------- the loader reads only the repo it was pointed at


@pytest.mark.parametrize("field", ["absolute file", "relative file", "url", "hub id of another repo"])
def test_a_repo_config_cannot_redirect_the_weights(
    field, two_weights, offline_cache, put_in_cache, repo_with_config, monkeypatch
):
    repo_bytes, elsewhere, repo_state, _ = two_weights
    monkeypatch.chdir(elsewhere.parent)
    redirect = {
        "absolute file": {"file": str(elsewhere)},
        "relative file": {"file": elsewhere.name},
        "url": {"url": elsewhere.as_uri()},
        "hub id of another repo": {"hf_hub_id": "other/weights"},
    }[field]
    put_in_cache(offline_cache, "other/weights", {"model.safetensors": elsewhere.read_bytes()})
    repo_with_config(offline_cache, "evil/rmt", repo_bytes, **redirect)
    model = timm.create_model("hf-hub:evil/rmt", pretrained=True)
    assert "models--evil--rmt" in model.load_report.source
    assert _same(model, repo_state)


def test_a_repo_config_naming_a_file_outside_the_repo_is_refused_in_one_sentence(
    two_weights, offline_cache, repo_with_config
):
    repo_with_config(offline_cache, "evil/rmt", two_weights[0], hf_hub_filename="../../models--other/x.safetensors")
    with pytest.raises(CheckpointError) as refused:
        timm.create_model("hf-hub:evil/rmt", pretrained=True)
    message = str(refused.value)
    assert "not a file inside that repo" in message and "\n" not in message and message.endswith(".")


def test_the_caller_may_still_ask_for_another_file(two_weights, offline_cache, repo_with_config):
    repo_bytes, elsewhere, _, other_state = two_weights
    repo_with_config(offline_cache, "fine/rmt", repo_bytes)
    model = timm.create_model("hf-hub:fine/rmt", pretrained=True, pretrained_cfg_overlay=dict(file=str(elsewhere)))
    assert _same(model, other_state)
    local = zoo.load("rmt_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(elsewhere)))
    assert _same(local, other_state)


# ---------------------------------------------------------------- results published: private, redacted, shown


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> dict:
    """HfApi replaced by a recorder of the repos it would create and each commit's files."""
    calls: dict = {"repos": [], "commits": []}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            calls["repos"].append((repo_id, kwargs))

        def create_commit(self, repo_id, operations, **kwargs):
            files = {}
            for op in operations:
                op.path_or_fileobj.seek(0)
                files[op.path_in_repo] = op.path_or_fileobj.read()
            calls["commits"].append(files)
            return SimpleNamespace(commit_url=f"https://hf.test/{repo_id}/commit/1")

    import hub.publish

    monkeypatch.setattr(hub.publish, "HfApi", FakeApi)
    return calls


def _private_rows() -> list[dict]:
    inside = REPO_ROOT / "results" / "cpu" / "r.jsonl"
    env = {"device_name": "Some CPU", "hostname": "lab-node-17"}
    base = {"backend": "eager", "precision": "fp32", "batch_size": 1, "input_size": [224, 224], "device": "cpu",
            "status": "ok", "throughput_ips": 10.0, "env": env}  # fmt: skip
    return [
        {**base, "model": "rmt_t", "command": f"python bench.py --out {inside} --data /home/alice/imagenet/val",
         "data": "/home/alice/imagenet/val", "weights": "/home/alice/ckpt/rmt_t.pth"},
        {**base, "model": "swin_t", "status": "error", "reason": "worker on lab-node-17 died reading /scratch/a.png",
         "command": "python bench.py --out=/tmp/x.jsonl --models swin_t", "weights": "hub"},
    ]  # fmt: skip


def test_published_rows_hide_host_names_and_local_paths_unless_asked():
    rows = _private_rows()
    shown = published_rows(rows)
    text = json.dumps(shown)
    for secret in ("lab-node-17", "/home/alice", "/scratch", "/tmp/x.jsonl", str(REPO_ROOT)):
        assert secret not in text, secret
    assert "hostname" not in shown[0]["env"] and shown[0]["env"]["device_name"] == "Some CPU"
    assert shown[0]["command"] == "python bench.py --out results/cpu/r.jsonl --data <path>"  # relative inside the repo
    assert shown[1]["command"] == "python bench.py --out=<path> --models swin_t"
    assert shown[0]["weights"] == "<path>" and shown[1]["weights"] == "hub"
    assert shown[1]["reason"] == "worker on <host> died reading <path>"
    assert published_rows(rows, include_host=True) == rows
    assert rows == _private_rows()  # the caller's rows are not changed


def test_push_results_is_private_by_default_and_uploads_the_redacted_rows(fake_hub):
    push_results(_private_rows(), "me/bench", sources=["r.jsonl"])
    [(repo, kwargs)] = fake_hub["repos"]
    assert kwargs["private"] is True
    [files] = fake_hub["commits"]
    uploaded = files["results.jsonl"].decode()
    assert "lab-node-17" not in uploaded and "/home/alice" not in uploaded
    for name in ("README.md", "results.csv", "table.md"):
        assert "/home/alice" not in files[name].decode() and "lab-node-17" not in files[name].decode(), name
    assert [json.loads(line) for line in uploaded.splitlines()] == published_rows(_private_rows())


def test_push_results_dry_run_says_the_rows_are_redacted_and_public_is_asked_for(tmp_path, fake_hub, capsys):
    from bench.results import append_row

    results = tmp_path / "r.jsonl"
    for row in _private_rows():
        append_row(results, row)
    assert hub_main(["push-results", str(results), "--repo", "me/bench", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Host names and local paths in every file: redacted (--include-host keeps them)." in out
    assert "lab-node-17" not in out and "/home/alice" not in out
    assert "(private dataset repo" in out and fake_hub["commits"] == []
    assert hub_main(["push-results", str(results), "--repo", "me/bench", "--dry-run", "--include-host"]) == 0
    assert "Host names and local paths in every file: kept (--include-host)." in capsys.readouterr().out
    assert hub_main(["push-results", str(results), "--repo", "me/bench", "--public", "--include-host"]) == 0
    assert fake_hub["repos"][-1][1]["private"] is False
    assert b"lab-node-17" in fake_hub["commits"][-1]["results.jsonl"]


# ---------------------------------------------------------------- weights: never an upstream repo by default


@pytest.mark.parametrize("name", ["swin_t", "maxvit_t", "internimage_t"])
def test_publish_needs_an_explicit_repo_for_an_upstream_family(name, tmp_path, capsys):
    folder = tmp_path / name
    folder.mkdir()
    upstream = zoo.info(name).hf_hub_id
    config = {"architecture": name, "family": zoo.info(name).family, "pretrained_cfg": {"hf_hub_id": upstream},
              "provenance": {"weights_sha256": "0" * 64}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "README.md").write_text("card")
    with pytest.raises(PublishError) as refused:
        plan_upload(folder)
    assert f"{upstream}, the upstream repo of {name}" in str(refused.value) and "--repo" in str(refused.value)
    assert hub_main(["publish", str(folder), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Would upload" not in err


# ---------------------------------------------------------------- convert: only what it made, nothing left behind


@pytest.fixture(scope="module")
def release(two_weights) -> Path:
    return two_weights[1]  # any rmt_t checkpoint will do


@pytest.fixture
def quick_convert(monkeypatch: pytest.MonkeyPatch) -> None:
    """The output comparison skipped (it builds the model twice): these tests are about where files go."""
    import hub.convert

    monkeypatch.setattr(hub.convert, "_outputs", lambda name, weights, x: torch.zeros(1))


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_file_put_in_out_dir_during_the_conversion_is_kept_and_the_conversion_refused(
    release, quick_convert, tmp_path, monkeypatch
):
    import hub.convert

    out = tmp_path / "out"
    real = hub.convert.render_card

    def meanwhile(*args, **kwargs):
        out.mkdir(exist_ok=True)
        (out / "notes.txt").write_text("someone else's")
        return real(*args, **kwargs)

    monkeypatch.setattr(hub.convert, "render_card", meanwhile)
    with pytest.raises(ConversionError, match="was given files during the conversion") as refused:
        convert("rmt_t", release, out)
    assert "\n" not in str(refused.value)
    assert _listing(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "someone else's"
    assert _listing(tmp_path) == ["out"]  # no staging folder left
    convert("rmt_t", release, out, force=True)  # asked for: replaced whole
    assert _listing(out) == ["README.md", "config.json", "model.safetensors"]


def test_staging_folders_of_killed_conversions_are_removed_by_the_next(release, quick_convert, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.partial-{dead.pid}-abc"
    live = tmp_path / f".out.partial-{os.getppid()}-abc"  # a conversion still running
    for folder in (stale, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 100)
    decoy = tmp_path / f".out.partial-{dead.pid}-link"
    decoy.symlink_to(live)
    convert("rmt_t", release, tmp_path / "out")
    assert not stale.exists() and live.exists() and decoy.is_symlink()
    assert _listing(tmp_path) == sorted([live.name, decoy.name, "out"])


def test_convert_on_a_full_disk_is_one_sentence_and_leaves_nothing(release, quick_convert, tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        assert hub_main(["convert", "--model", "rmt_t", str(release), str(disk / "out")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert _listing(disk) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.e2e
def test_sigterm_during_a_conversion_leaves_no_staging_folder(release, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "convert", "--model", "rmt_t", str(release), str(tmp_path / "out")],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while not any(p.name.startswith(".out.partial-") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err and "Traceback" not in err
    assert _listing(tmp_path) == []
