"""`hub publish` (hub/publish.py): exactly the planned regular files, or nothing; configs that no longer describe
the folder refused."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from huggingface_hub import constants

from hub.__main__ import main
from hub.publish import PublishError, plan_upload, publish


def test_publish_refuses_weights_that_are_not_the_converted_ones(rmt_converted, tmp_path, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(rmt_converted, folder)
    with open(folder / "model.safetensors", "ab") as f:
        f.write(b"\0")
    with pytest.raises(PublishError, match="sha256 differs from config.json"):
        plan_upload(folder)
    assert main(["publish", str(folder), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "convert again" in err


def test_publish_dry_run_lists_files_and_target_without_network(rmt_converted, offline_cache, capsys, hub_org):
    assert main(["publish", str(rmt_converted), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{constants.ENDPOINT}/{hub_org}/rmt_t" in out  # the org recorded at convert time
    for name in ("model.safetensors", "config.json", "README.md"):
        assert name in out
    assert "MB" in out and "nothing was uploaded" in out

    assert main(["publish", str(rmt_converted), "--repo", "me/something"]) == 1  # offline: refused in one line
    captured = capsys.readouterr()
    assert (
        f"points users to {hub_org}/rmt_t, not me/something; zoo.load('rmt_t', pretrained=True) will not"
        in captured.err
    )
    assert captured.err.strip().splitlines()[-1].startswith("error: ") and "HF_HUB_OFFLINE" in captured.err

    assert main(["publish", str(rmt_converted.parent)]) == 1
    assert "is not a converted folder" in capsys.readouterr().err


def test_publish_creates_repo_and_uploads_exactly_the_planned_files(rmt_converted, fake_hub):
    url = publish(plan_upload(rmt_converted, "me/rmt_t", private=True), token="tok")
    assert url == "https://hf.test/me/rmt_t/commit/1"
    assert fake_hub["token"] == "tok"
    assert fake_hub["repos"] == [("me/rmt_t", {"repo_type": "model", "private": True, "exist_ok": True})]
    [commit] = fake_hub["commits"]
    assert commit["repo_type"] == "model"
    assert {k: len(v) for k, v in commit["files"].items()} == {
        f: (rmt_converted / f).stat().st_size for f in ("README.md", "config.json", "model.safetensors")
    }


def _publishable_copy(converted: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of a converted folder, and beside it a folder of secrets that must never be uploaded."""
    folder, outside = tmp_path / "pub", tmp_path / "outside"
    shutil.copytree(converted, folder)
    outside.mkdir()
    (outside / "token").write_text("hf_secret")
    (outside / "eval.md").write_text("s3cr3")  # the size of notes/eval.md, so only the file's identity tells them apart
    (folder / "notes").mkdir()
    (folder / "notes" / "eval.md").write_text("notes")
    return folder, outside


def test_publish_uploads_regular_files_inside_the_folder_only_and_says_what_it_skipped(
    rmt_converted, tmp_path, fake_hub, capsys
):
    folder, outside = _publishable_copy(rmt_converted, tmp_path)
    (folder / "token").symlink_to(outside / "token")
    (folder / "linked").symlink_to(outside)
    (folder / "notes" / "token").symlink_to("../../outside/token")
    os.mkfifo(folder / "pipe")
    (folder / ".git").mkdir()
    skipped = ["token (a symbolic link", "linked (a symbolic link", "notes/token (a symbolic link",
               "pipe (not a regular file", ".git (hidden)"]  # fmt: skip
    for dry_run in (["--dry-run"], []):
        assert main(["publish", str(folder), *dry_run]) == 0
        out = capsys.readouterr().out
        assert all(f"skipped  {s}" in out for s in skipped), out
    [commit] = fake_hub["commits"]
    assert sorted(commit["files"]) == ["README.md", "config.json", "model.safetensors", "notes/eval.md"]
    assert commit["files"]["notes/eval.md"] == b"notes" and b"hf_secret" not in b"".join(commit["files"].values())

    (folder / "config.json").rename(outside / "config.json")
    (folder / "config.json").symlink_to(outside / "config.json")  # a file publish needs may not be a link either
    with pytest.raises(PublishError, match=r"config.json \(a symbolic link"):
        plan_upload(folder)


@pytest.mark.parametrize("swap", ["file for a link", "folder for a link", "file for another file"])
def test_publish_sends_the_planned_files_or_nothing(swap, rmt_converted, tmp_path, fake_hub):
    """Whatever is swapped in between the plan (the dry run's listing) and the upload is not sent."""
    folder, outside = _publishable_copy(rmt_converted, tmp_path)
    plan = plan_upload(folder)
    notes = folder / "notes" / "eval.md"
    if swap == "file for a link":
        notes.unlink()
        notes.symlink_to(outside / "eval.md")
    elif swap == "folder for a link":
        notes.parent.rename(tmp_path / "notes-old")
        notes.parent.symlink_to(outside)
    else:
        (outside / "eval.md").rename(notes)
    with pytest.raises(PublishError, match="nothing was uploaded"):
        publish(plan)
    assert fake_hub["repos"] == [] and fake_hub["commits"] == []


def test_publish_names_a_config_field_of_the_wrong_type(rmt_converted, tmp_path, capsys, one_sentence):
    folder = tmp_path / "pub"
    shutil.copytree(rmt_converted, folder)
    config = json.loads((folder / "config.json").read_text())
    cases = [
        ({**config, "provenance": "hand edit"}, 'field provenance is a string "hand edit", not an object'),
        ({**config, "architecture": 5}, "field architecture is a number 5, not a string"),
        ({**config, "pretrained_cfg": []}, "field pretrained_cfg is a list [], not an object"),
        ({**config, "pretrained_cfg": {**config["pretrained_cfg"], "hf_hub_id": 7}}, "pretrained_cfg.hf_hub_id is a"),
        ({**config, "provenance": {**config["provenance"], "weights_sha256": None}}, "weights_sha256 is missing"),
        ({k: v for k, v in config.items() if k != "family"}, "field family is missing, not a string"),
        ([config], "holds a list, not the object"),
    ]
    for edited, needle in cases:
        (folder / "config.json").write_text(json.dumps(edited))
        assert main(["publish", str(folder), "--dry-run"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and one_sentence(err[len("error: ") :].strip()) and needle in err, err


def test_publish_refuses_a_config_that_no_longer_describes_the_folder(rmt_converted, tmp_path, capsys):
    folder = tmp_path / "pub"
    shutil.copytree(rmt_converted, folder)
    config = json.loads((folder / "config.json").read_text())

    def dry_run(edited: dict, *args: str) -> tuple[int, str, str]:
        (folder / "config.json").write_text(json.dumps(edited))
        code = main(["publish", str(folder), "--dry-run", *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    no_repo = {**config, "pretrained_cfg": {k: v for k, v in config["pretrained_cfg"].items() if k != "hf_hub_id"}}
    code, out, err = dry_run(no_repo)
    assert code == 1 and "names no repo" in err and "--repo ORG/NAME" in err and "None" not in out + err
    code, out, err = dry_run(no_repo, "--repo", "me/rmt_t")
    assert code == 0 and f"{constants.ENDPOINT}/me/rmt_t " in out and "names no repo to load from" in err
    assert dry_run(config, "--repo", "me/rmt/t")[:3:2] == (1, "error: 'me/rmt/t' is not a valid Hub repo id "
                                                           "(ORG/NAME: letters, digits, -, _ and .).\n")  # fmt: skip

    for architecture, needle in [("rmt_s", "does not fit rmt_s"), ("internimage_t", "does not fit internimage_t"),
                                 ("nope", "'nope', which is no model")]:  # fmt: skip
        code, out, err = dry_run({**config, "architecture": architecture})
        assert code == 1 and err.count("\n") == 1 and needle in err and "Would upload" not in out, err
    assert "config.json names rmt_s as its architecture" in dry_run({**config, "architecture": "rmt_s"})[2]
    assert dry_run(config)[0] == 0  # the official q/k/v keys fit rmt_t once mapped, as the zoo's loader maps them
