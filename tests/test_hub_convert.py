"""`hub convert` (hub/convert.py): the reported weights taken, official keys kept, provenance recorded, and
every refusal in one sentence with nothing half-written."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import zoo
from hub.__main__ import main
from hub.convert import ConversionError, convert, file_sha256


REPO_ROOT = Path(__file__).resolve().parents[1]


def test_convert_takes_reported_weights_keeps_official_keys_and_records_provenance(rmt_release, rmt_converted, hub_org):
    source, plain, ema = rmt_release
    written = load_file(str(rmt_converted / "model.safetensors"))
    assert sorted(written) == sorted(plain)  # the official key layout, unchanged
    # RMT-T's reported accuracy is its plain weights (qhfan/RMT #25), so they win over the EMA ones here.
    assert all(torch.equal(written[k], plain[k]) for k in plain)
    assert not torch.equal(written["head.weight"], ema["head.weight"])
    with safe_open(str(rmt_converted / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}

    config = json.loads((rmt_converted / "config.json").read_text())
    prov = config["provenance"]
    assert config["architecture"] == "rmt_t" and config["arch"]["depths"] == [2, 2, 8, 2]
    assert prov["source_file"] == "RMT-T.pth" and prov["source_sha256"] == file_sha256(source)
    assert prov["entry"] == "model" and prov["weights"] == "non-EMA weights"
    assert prov["weights_sha256"] == file_sha256(rmt_converted / "model.safetensors")
    assert prov["check"]["strict_load"] and prov["check"]["max_abs_output_diff"] == 0.0
    assert config["pretrained_cfg"]["hf_hub_id"] == f"{hub_org}/rmt_t"
    assert config["pretrained_cfg"]["crop_pct"] == 0.875 and config["pretrained_cfg"]["interpolation"] == "bicubic"
    assert config["paper_metrics"]["top1"] == 82.4


def test_convert_runs_from_a_source_tree_without_installed_metadata(bare_converted):
    """The version has one home (common.__version__, which pyproject.toml reads), so no metadata lookup can fail."""
    import tomllib

    import common

    config = json.loads((bare_converted[0] / "config.json").read_text())
    assert config["provenance"]["converter"] == f"rmt-zoo {common.__version__} (python -m hub convert)"
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "common.__version__"}


def test_converted_folder_has_a_plain_mkdir_mode_and_reads_well(bare_converted):
    out, printed = bare_converted
    assert stat.S_IMODE(out.stat().st_mode) == 0o750  # 0777 under the umask 027, not mkdtemp's 0700
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o640}
    assert printed.startswith("Took the only state dict (entry '(bare)') of rmt_t.safetensors: "), printed
    assert "the the" not in printed.lower() and "the the" not in (out / "README.md").read_text().lower()


def test_convert_takes_ema_for_models_that_report_it(tmp_path, deit_checkpoint, hub_org, official_state):
    plain, ema = official_state("rmt_s", seed=0), official_state("rmt_s", seed=1)
    source = deit_checkpoint(tmp_path / "RMT-S.pth", plain, ema)
    done = convert("rmt_s", source, tmp_path / "rmt_s", org=hub_org)
    assert done.config["provenance"]["entry"] == "model_ema"
    written = load_file(str(tmp_path / "rmt_s" / "model.safetensors"))
    assert all(torch.equal(written[k], ema[k]) for k in ema)


def test_convert_rejects_a_conversion_that_changes_outputs(rmt_release, tmp_path, monkeypatch):
    import hub.convert

    def perturbing_save(tensors, path, metadata=None):
        tensors["head.bias"] = tensors["head.bias"] + 1.0
        save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(hub.convert, "save_file", perturbing_save)
    with pytest.raises(ConversionError, match="outputs up to"):
        convert("rmt_t", rmt_release[0], tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_config_is_timm_format_without_nulls_and_card_says_how_to_install(rmt_converted, hub_org):
    text = (rmt_converted / "config.json").read_text()
    assert "null" not in text
    config = json.loads(text)
    assert config["num_features"] == 1024 and config["num_classes"] == 1000
    pre = config["pretrained_cfg"]
    assert pre["classifier"] == "head" and pre["first_conv"] == "patch_embed.proj.0" and pre["pool_size"] == [7, 7]
    assert timm.models.PretrainedCfg(**pre).hf_hub_id == f"{hub_org}/rmt_t"  # every field is one timm knows
    card = ModelCard.load(rmt_converted / "README.md")
    result = card.data.eval_results[0]
    assert (result.metric_type, result.metric_value, result.dataset_type) == ("accuracy", 82.4, "imagenet-1k")
    assert card.data.license == "other" and card.data.license_link == "https://github.com/qhfan/RMT"
    assert "pip install" in card.text and "`import zoo` first" in card.text
    assert f'timm.create_model("hf-hub:{hub_org}/rmt_t", pretrained=True)' in card.text


def test_cli_convert_errors_are_one_line(rmt_release, tmp_path, capsys, evil_pickle):
    marker = tmp_path / "pwned"
    (tmp_path / "f.txt").write_text("a file")
    (tmp_path / "evil.pth").write_bytes(evil_pickle({"model": {"w": torch.ones(1)}}, marker))
    old = {k: v for k, v in rmt_release[2].items() if not k.endswith("Relpos.angle") and ".ffn.dwconv." not in k}
    torch.save({"model": old}, tmp_path / "dec2023.pth")
    cases = [
        (["convert", "--model", "rmt_t", str(tmp_path / "evil.pth"), str(tmp_path / "a")], "Refused"),
        (["convert", "--model", "rmt_t", str(tmp_path / "dec2023.pth"), str(tmp_path / "b")], "Relpos.angle"),
        (["convert", "--model", "rmt_tt", str(rmt_release[0]), str(tmp_path / "c")], "Did you mean: rmt_t"),
    ]
    unusable_paths = [  # bad usage (exit 2), as for every command line's input and output paths
        (["convert", "--model", "rmt_t", str(tmp_path / "nope.pth"), str(tmp_path / "d")], "does not exist"),
        (
            ["convert", "--model", "rmt_t", str(rmt_release[0]), str(tmp_path / "e"), "--results", str(tmp_path / "r")],
            "--results",
        ),
        (
            ["convert", "--model", "rmt_t", str(rmt_release[0]), str(tmp_path / "f.txt" / "out")],
            "which is a file, not a folder",
        ),
        (["convert", "--model", "rmt_t", str(rmt_release[0]), str(tmp_path / "f.txt")], "is a file; give a folder"),
    ]
    for (argv, needle), code in [*((case, 1) for case in cases), *((case, 2) for case in unusable_paths)]:
        assert main(argv) == code, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not marker.exists()
    assert not any((tmp_path / d).exists() for d in "abcde")
    assert (tmp_path / "f.txt").read_text() == "a file"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staged folder left behind


def test_cli_convert_prints_the_zoos_own_refusal_of_an_unsafe_pickle(tmp_path, capsys, evil_pickle, official_state):
    """The zoo words why a file was refused (unsafe, not damaged); hub convert passes that sentence through."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(evil_pickle({"model": official_state("rmt_t")}, marker))
    with pytest.raises(zoo.CheckpointError) as refused:
        zoo.read_checkpoint(evil)
    assert main(["convert", "--model", "rmt_t", str(evil), str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"error: {refused.value}\n"
    assert "damaged" not in str(refused.value) and not marker.exists() and not (tmp_path / "out").exists()


def _folder_state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_convert_refuses_a_non_empty_folder_and_force_replaces_it_whole(rmt_release, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old weights")
    (out / "config.json").write_text("{}")
    argv = ["convert", "--model", "rmt_t", str(rmt_release[0]), str(out)]
    assert main(argv) == 2  # bad usage: the output path cannot be used as given
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "already holds files" in err and "--force" in err
    assert _folder_state(out) == {"config.json": b"{}", "stale.bin": b"old weights"}

    assert main([*argv, "--force"]) == 0
    assert main(["convert", "--model", "rmt_t", str(rmt_release[0]), str(tmp_path / "new" / "nested" / "out")]) == 0
    assert (tmp_path / "new" / "nested" / "out" / "model.safetensors").is_file()  # missing parents are created
    shutil.rmtree(tmp_path / "new")
    assert sorted(_folder_state(out)) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["architecture"] == "rmt_t"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staged or old folder left behind


def test_convert_refuses_an_out_dir_holding_an_input_before_writing(rmt_release, tmp_path, capsys):
    """OUT_DIR is replaced whole under --force, so any input inside it, however named, would be lost."""
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(rmt_release[0], out / "RMT-T.pth")
    (out / "results.jsonl").write_text('{"model": "rmt_t"}\n')
    (tmp_path / "link.jsonl").symlink_to(out / "results.jsonl")
    (tmp_path / "out-link").symlink_to(out)
    before = _folder_state(out)
    source = str(rmt_release[0])
    cases = [
        ([source, str(out), "--results", str(out / "results.jsonl")], "--results"),
        ([str(out / "RMT-T.pth"), str(out)], "SOURCE"),
        ([source, str(out), "--results", str(tmp_path / "link.jsonl")], "--results"),
        ([source, str(tmp_path / "out-link"), "--results", str(out / "results.jsonl")], "--results"),
    ]
    for argv, named in cases:
        assert main(["convert", "--model", "rmt_t", *argv, "--force"]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"error: {named} ") and err.count("\n") == 1 and "lies inside OUT_DIR" in err, err
        assert _folder_state(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "out", "out-link"]


def test_interrupted_reconversion_leaves_the_previous_folder_untouched(rmt_release, tmp_path, monkeypatch, hub_org):
    out = tmp_path / "out"
    convert("rmt_t", rmt_release[0], out, org=hub_org)
    before = _folder_state(out)

    import hub.convert

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hub.convert, "render_card", interrupted)  # after the new weights and config are written
    with pytest.raises(KeyboardInterrupt):
        convert("rmt_t", rmt_release[0], out, org="another-org", force=True)
    assert _folder_state(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_weights_write_is_one_sentence_and_leaves_nothing(rmt_release, tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError

    import hub.convert

    def failing_save(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)")

    monkeypatch.setattr(hub.convert, "save_file", failing_save)
    assert main(["convert", "--model", "rmt_t", str(rmt_release[0]), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Writing ") and err.count("\n") == 1 and "Permission denied" in err
    assert list(tmp_path.iterdir()) == []
