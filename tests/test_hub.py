"""The Hub layer offline: convert, a Hub cache built here, `zoo.load(name, pretrained=True)`, publish, and errors.

Nothing reaches the network: huggingface_hub runs in offline mode against a cache laid out the way it lays
one out (blobs, snapshots/<commit>, refs/<revision>). "Official" checkpoints are made here from the official
key lists in tests/fixtures (RMT, InternImage) or from timm's own layout (Swin, MaxViT).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard, constants
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import zoo
from hub.__main__ import main
from hub.card import read_results, render_card
from hub.convert import ConversionError, convert, file_sha256
from hub.download import ORG_ENV, REVISION_ENV, WeightsUnavailableError, fetch_weights
from hub.publish import PublishError, plan_upload, publish
from conftest import FIXTURES

REPO_ROOT = Path(__file__).resolve().parents[1]
ORG = "test-org"


# ---------------------------------------------------------------- helpers


def put_in_cache(cache: Path, repo_id: str, files: dict[str, Path | bytes], revision: str = "main") -> str:
    """Lay `files` out as huggingface_hub's cache holds a repo at `revision`; return the commit id used."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, content in files.items():
        tmp = repo / "blobs" / "incoming"
        tmp.write_bytes(content) if isinstance(content, bytes) else tmp.write_bytes(content.read_bytes())
        blob = repo / "blobs" / file_sha256(tmp)
        tmp.replace(blob)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


def official_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the official code's exact keys and shapes (BN variances positive, decays negative)."""
    shapes = json.loads((FIXTURES / "official_state_dict_shapes.json").read_text())[name]
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("Relpos.decay"):
            state[key] = -torch.rand(shape, generator=g) - 0.1
        else:
            state[key] = torch.randn(shape, generator=g) * 0.02
    return state


def timm_state(name: str) -> dict[str, torch.Tensor]:
    """A freshly initialised zoo model's state dict: timm's own layout, as timm's Hub repos hold it."""
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in zoo.load(name).state_dict().items()}


def deit_checkpoint(path: Path, model: dict, ema: dict | None) -> Path:
    """A DeiT-style training checkpoint, as RMT's official release is."""
    obj = {"model": model, "epoch": 299, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]}}
    if ema is not None:
        obj["model_ema"] = ema
    torch.save(obj, path)
    return path


def logits(model: torch.nn.Module) -> torch.Tensor:
    """Outputs on a small fixed input (RMT and InternImage take any size), to compare loaded weights cheaply."""
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return model(x)


def one_sentence(message: str) -> bool:
    body = message.rstrip(".")
    return "\n" not in message and ". " not in body and message.endswith(".")


class Marker:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def evil_pickle(obj: dict, marker: Path) -> bytes:
    """`obj` plus an object whose unpickling creates `marker`; checked to really do so with plain pickle."""
    probe = marker.with_name(marker.name + ".probe")
    pickle.loads(pickle.dumps(Marker(probe), protocol=2))
    assert probe.exists()
    return pickle.dumps({**obj, "x": Marker(marker)}, protocol=2)


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache, huggingface_hub in offline mode (in this process and in subprocesses)."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in (ORG_ENV, REVISION_ENV):
        monkeypatch.delenv(var, raising=False)
    return cache


@pytest.fixture(scope="module")
def rmt_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """An official-layout RMT-T release file with plain and EMA weights: (path, plain, ema)."""
    plain, ema = official_state("rmt_t", seed=0), official_state("rmt_t", seed=1)
    path = deit_checkpoint(tmp_path_factory.mktemp("release") / "RMT-T.pth", plain, ema)
    return path, plain, ema


@pytest.fixture(scope="module")
def rmt_converted(rmt_release, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _, _ = rmt_release
    out = tmp_path_factory.mktemp("converted") / "rmt_t"
    results = out.parent / "results.jsonl"
    rows = [
        {"model": "rmt_t", "status": "ok", "backend": "eager", "precision": "fp32", "batch_size": 64,
         "input_size": [224, 224], "device": "cuda", "throughput_ips": 1234.56, "latency_ms": {"p50": 51.9},
         "top1": None, "env": {"device_name": "NVIDIA H100"}},
        {"model": "rmt_t", "status": "error", "backend": "tensorrt", "throughput_ips": 99999.0},
        {"model": "rmt_s", "status": "ok", "backend": "eager", "throughput_ips": 777.0},
    ]  # fmt: skip
    results.write_text("\n".join(map(json.dumps, rows)) + "\nnot json\n")
    convert("rmt_t", path, out, results=results, org=ORG)
    return out


# ---------------------------------------------------------------- convert


def test_convert_takes_reported_weights_keeps_official_keys_and_records_provenance(rmt_release, rmt_converted):
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
    assert config["pretrained_cfg"]["hf_hub_id"] == f"{ORG}/rmt_t"
    assert config["pretrained_cfg"]["crop_pct"] == 0.875 and config["pretrained_cfg"]["interpolation"] == "bicubic"
    assert config["paper_metrics"]["top1"] == 82.4


def test_convert_takes_ema_for_models_that_report_it(tmp_path):
    plain, ema = official_state("rmt_s", seed=0), official_state("rmt_s", seed=1)
    source = deit_checkpoint(tmp_path / "RMT-S.pth", plain, ema)
    done = convert("rmt_s", source, tmp_path / "rmt_s", org=ORG)
    assert done.config["provenance"]["entry"] == "model_ema"
    written = load_file(str(tmp_path / "rmt_s" / "model.safetensors"))
    assert all(torch.equal(written[k], ema[k]) for k in ema)


def test_card_front_matter_paper_and_measured_numbers(rmt_converted):
    card = ModelCard.load(rmt_converted / "README.md")
    assert card.data.library_name == "timm" and card.data.datasets == ["imagenet-1k"]
    assert {"image-classification", "rmt"} <= set(card.data.tags)
    text = card.text
    assert 'zoo.load("rmt_t", pretrained=True)' in text and f"RMT_HUB_ORG={ORG}" in text
    assert 'timm.create_model("rmt_t", pretrained=True)' in text
    assert "| 14.33 | 2.50 | 82.40 |" in text
    assert "| eager | fp32 | 64 | 224x224 | NVIDIA H100 | 1234.6 | 51.90 | - |" in text
    assert "99999" not in text and "777" not in text  # failed rows and other models stay off the card
    assert "not stated by the official release" in text  # qhfan/RMT names no license
    assert zoo.families()["rmt"].description in text  # what the model is, from the registry


def test_card_without_rows_says_so_and_never_invents(rmt_converted, tmp_path):
    config = json.loads((rmt_converted / "config.json").read_text())
    empty = tmp_path / "results.jsonl"
    empty.write_text(json.dumps({"model": "rmt_s", "status": "ok", "throughput_ips": 5.0}) + "\n")
    text = render_card(config, read_results(empty, "rmt_t"), empty.name)
    assert "No measured numbers yet" in text and "img/s" not in text
    default_repo = {**config["pretrained_cfg"], "hf_hub_id": zoo.info("rmt_t").hf_hub_id}
    assert "RMT_HUB_ORG" not in render_card({**config, "pretrained_cfg": default_repo}, [])


def test_convert_rejects_a_conversion_that_changes_outputs(rmt_release, tmp_path, monkeypatch):
    import hub.convert

    def perturbing_save(tensors, path, metadata=None):
        tensors["head.bias"] = tensors["head.bias"] + 1.0
        save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(hub.convert, "save_file", perturbing_save)
    with pytest.raises(ConversionError, match="outputs up to"):
        convert("rmt_t", rmt_release[0], tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


# ---------------------------------------------------------------- round trips through the cache, every family


def test_rmt_round_trip_by_name_with_org_and_revision(rmt_release, rmt_converted, offline_cache, monkeypatch):
    reference = logits(zoo.load("rmt_t", pretrained=rmt_release[0]))
    put_in_cache(offline_cache, f"{ORG}/rmt_t", {"model.safetensors": rmt_converted / "model.safetensors"})
    monkeypatch.setenv(ORG_ENV, ORG)
    model = zoo.load("rmt_t", pretrained=True)
    assert model.load_report.source.startswith(str(offline_cache))
    assert torch.equal(logits(model), reference)
    assert torch.equal(logits(timm.create_model("rmt_t", pretrained=True).eval()), reference)

    # A revision other than main is taken from ZOO_HUB_REVISION.
    put_in_cache(offline_cache, f"{ORG}/rmt_t", {"model.safetensors": rmt_converted / "model.safetensors"}, "v2")
    monkeypatch.setenv(REVISION_ENV, "v3")
    with pytest.raises(WeightsUnavailableError, match="at revision v3"):
        zoo.load("rmt_t", pretrained=True)
    monkeypatch.setenv(REVISION_ENV, "v2")
    assert "/snapshots/" in str(fetch_weights(zoo.info("rmt_t")))


def test_internimage_round_trip_official_and_hub_layout(offline_cache, tmp_path, monkeypatch):
    state = official_state("internimage_t")
    source = deit_checkpoint(tmp_path / "internimage_t_1k_224.pth", state, None)
    out = convert("internimage_t", source, tmp_path / "internimage_t").out_dir
    assert json.loads((out / "config.json").read_text())["provenance"]["entry"] == "model"

    repo = zoo.info("internimage_t").hf_hub_id
    assert repo == "OpenGVLab/internimage_t_1k_224"
    put_in_cache(offline_cache, repo, {"model.safetensors": out / "model.safetensors"})
    model = zoo.load("internimage_t", pretrained=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())  # official names, no renaming
    reference = logits(model)

    # OpenGVLab's own repos hold the transformers-style port: keys prefixed "model.".
    hub_layout = {f"model.{k}": v for k, v in load_file(str(out / "model.safetensors")).items()}
    save_file(hub_layout, str(tmp_path / "hub.safetensors"))
    put_in_cache(offline_cache, repo, {"model.safetensors": tmp_path / "hub.safetensors"}, "v")
    monkeypatch.setenv(REVISION_ENV, "v")
    assert torch.equal(logits(zoo.load("internimage_t", pretrained=True)), reference)


@pytest.mark.parametrize("name", ["swin_t", "maxvit_t"])
def test_timm_families_round_trip(name, offline_cache, tmp_path):
    state = timm_state(name)
    save_file(state, str(tmp_path / "source.safetensors"))
    out = convert(name, tmp_path / "source.safetensors", tmp_path / name).out_dir
    repo = zoo.info(name).hf_hub_id
    assert repo.startswith("timm/")
    put_in_cache(offline_cache, repo, {"model.safetensors": out / "model.safetensors"})
    model = zoo.load(name, pretrained=True)
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)


def test_timm_loads_a_converted_folder_by_hf_hub_local_dir_file_and_checkpoint_path(
    rmt_release, rmt_converted, offline_cache, tmp_path
):
    """The folder `python -m hub convert` writes, uploaded anywhere, loads through timm's own ways of asking."""
    reference = logits(zoo.load("rmt_t", pretrained=rmt_release[0]))
    repo = "someorg/some-name"  # neither the registry's organisation nor RMT_HUB_ORG (unset here)
    put_in_cache(offline_cache, repo, {f: rmt_converted / f for f in ("model.safetensors", "config.json", "README.md")})
    model = timm.create_model(f"hf-hub:{repo}", pretrained=True).eval()
    assert "models--someorg--some-name" in model.load_report.source
    assert torch.equal(logits(model), reference)
    assert timm.data.resolve_data_config({}, model=model)["crop_pct"] == 0.875

    local = timm.create_model(f"local-dir:{rmt_converted}", pretrained=True).eval()
    assert local.load_report.source == str(rmt_converted / "model.safetensors")
    assert torch.equal(logits(local), reference)
    weights = str(rmt_converted / "model.safetensors")
    overlay = timm.create_model("rmt_t", pretrained=True, pretrained_cfg_overlay=dict(file=weights)).eval()
    assert torch.equal(logits(overlay), reference)
    # checkpoint_path is timm's own loader, for the model's own key layout (what timm's train.py saves).
    own = tmp_path / "own.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(own))
    assert torch.equal(logits(timm.create_model("rmt_t", checkpoint_path=str(own)).eval()), reference)
    # A converted folder given to zoo.load directly is read like local-dir.
    assert torch.equal(logits(zoo.load("rmt_t", pretrained=rmt_converted)), reference)


def test_config_is_timm_format_without_nulls_and_card_says_how_to_install(rmt_converted):
    text = (rmt_converted / "config.json").read_text()
    assert "null" not in text
    config = json.loads(text)
    assert config["num_features"] == 512 and config["num_classes"] == 1000
    pre = config["pretrained_cfg"]
    assert pre["classifier"] == "head" and pre["first_conv"] == "patch_embed.proj.0" and pre["pool_size"] == [7, 7]
    assert timm.models.PretrainedCfg(**pre).hf_hub_id == f"{ORG}/rmt_t"  # every field is one timm knows
    card = ModelCard.load(rmt_converted / "README.md")
    result = card.data.eval_results[0]
    assert (result.metric_type, result.metric_value, result.dataset_type) == ("accuracy", 82.4, "imagenet-1k")
    assert card.data.license == "other" and card.data.license_link == "https://github.com/qhfan/RMT"
    assert "pip install" in card.text and "`import zoo` first" in card.text
    assert f'timm.create_model("hf-hub:{ORG}/rmt_t", pretrained=True)' in card.text


# ---------------------------------------------------------------- errors


def test_missing_repo_offline_is_one_sentence_naming_where_and_what_to_do(offline_cache, monkeypatch):
    monkeypatch.setenv(ORG_ENV, "someone")
    with pytest.raises(WeightsUnavailableError) as err:
        zoo.load("rmt_t", pretrained=True)
    msg = str(err.value)
    assert one_sentence(msg), msg
    for part in ("someone/rmt_t", "model.safetensors", "revision main", "HF_HUB_OFFLINE", str(offline_cache),
                 "python -m hub convert --model rmt_t", 'pretrained="'):  # fmt: skip
        assert part in msg, (part, msg)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_missing_file_in_existing_repo_names_the_file(offline_cache):
    put_in_cache(offline_cache, "OpenGVLab/internimage_t_1k_224", {"config.json": b"{}"})
    where = "model.safetensors or pytorch_model.bin in OpenGVLab/internimage_t_1k_224 at revision main"
    with pytest.raises(WeightsUnavailableError, match=where):
        fetch_weights(zoo.info("internimage_t"))


def test_pickle_fallback_loads_weights_but_refuses_code(offline_cache, tmp_path):
    repo = f"{ORG}/rmt_t"
    # A repo with only pickled weights is used (weights_only=True)...
    state = official_state("rmt_t")
    torch.save({"model": state}, tmp_path / "good.bin")
    put_in_cache(offline_cache, repo, {"pytorch_model.bin": tmp_path / "good.bin"})
    model = zoo.load("rmt_t", pretrained=fetch_weights(zoo.info("rmt_t"), org=ORG))
    assert torch.equal(model.state_dict()["head.weight"], state["head.weight"])
    # Where both exist, safetensors wins.
    save_file(state, str(tmp_path / "good.safetensors"))
    files = {"pytorch_model.bin": tmp_path / "good.bin", "model.safetensors": tmp_path / "good.safetensors"}
    put_in_cache(offline_cache, repo, files, "both")
    assert fetch_weights(zoo.info("rmt_t"), org=ORG, revision="both").name == "model.safetensors"

    # ...but one that would run code when unpickled is refused, and the code never runs.
    marker = tmp_path / "pwned"
    (tmp_path / "evil.bin").write_bytes(evil_pickle({"model": state}, marker))
    put_in_cache(offline_cache, repo, {"pytorch_model.bin": tmp_path / "evil.bin"}, "evil")
    with pytest.raises(zoo.CheckpointError, match="Refused"):
        zoo.load("rmt_t", pretrained=fetch_weights(zoo.info("rmt_t"), org=ORG, revision="evil"))
    assert not marker.exists()


def test_corrupted_safetensors_in_cache(offline_cache, rmt_converted, tmp_path, monkeypatch):
    data = (rmt_converted / "model.safetensors").read_bytes()
    put_in_cache(offline_cache, f"{ORG}/rmt_t", {"model.safetensors": data[: len(data) // 2]})
    monkeypatch.setenv(ORG_ENV, ORG)
    with pytest.raises(zoo.CheckpointError, match="not a readable safetensors file"):
        zoo.load("rmt_t", pretrained=True)


def test_wrong_size_checkpoint_names_keys(offline_cache, tmp_path):
    # RMT-S weights published under the RMT-T name: extra blocks and wider FFNs, all named.
    save_file(official_state("rmt_s"), str(tmp_path / "rmt_s.safetensors"))
    put_in_cache(offline_cache, f"{ORG}/rmt_t", {"model.safetensors": tmp_path / "rmt_s.safetensors"})
    with pytest.raises(zoo.CheckpointMismatchError) as err:
        zoo.load("rmt_t", pretrained=fetch_weights(zoo.info("rmt_t"), org=ORG))
    assert "unexpected: layers.0.blocks.2." in str(err.value) and "ffn.fc1.weight (checkpoint" in str(err.value)


# ---------------------------------------------------------------- CLI and publish


def test_cli_convert_errors_are_one_line(rmt_release, tmp_path, capsys):
    marker = tmp_path / "pwned"
    (tmp_path / "f.txt").write_text("a file")
    (tmp_path / "evil.pth").write_bytes(evil_pickle({"model": {"w": torch.ones(1)}}, marker))
    old = {k: v for k, v in rmt_release[2].items() if not k.endswith("Relpos.angle") and ".ffn.dwconv." not in k}
    torch.save({"model": old}, tmp_path / "dec2023.pth")
    cases = [
        (["convert", "--model", "rmt_t", str(tmp_path / "evil.pth"), str(tmp_path / "a")], "Refused"),
        (["convert", "--model", "rmt_t", str(tmp_path / "dec2023.pth"), str(tmp_path / "b")], "Relpos.angle"),
        (["convert", "--model", "rmt_tt", str(rmt_release[0]), str(tmp_path / "c")], "Did you mean: rmt_t"),
        (["convert", "--model", "rmt_t", str(tmp_path / "nope.pth"), str(tmp_path / "d")], "does not exist"),
        (["convert", "--model", "rmt_t", str(rmt_release[0]), str(tmp_path / "e"), "--results", str(tmp_path / "r")],
         "Cannot read the results file"),
        (["convert", "--model", "rmt_t", str(tmp_path / "e" / "model.safetensors"), str(tmp_path / "e")],
         "lies inside"),
        (["convert", "--model", "rmt_t", str(rmt_release[0]), str(tmp_path / "f.txt" / "out")], "which is a file, not a folder"),
        (["convert", "--model", "rmt_t", str(rmt_release[0]), str(tmp_path / "f.txt")], "is a file; give a folder"),
    ]
    for argv, needle in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not marker.exists()
    assert not any((tmp_path / d).exists() for d in "abcde")
    assert (tmp_path / "f.txt").read_text() == "a file"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staged folder left behind


def _folder_state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_convert_refuses_a_non_empty_folder_and_force_replaces_it_whole(rmt_release, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old weights")
    (out / "config.json").write_text("{}")
    argv = ["convert", "--model", "rmt_t", str(rmt_release[0]), str(out)]
    assert main(argv) == 1
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


def test_interrupted_reconversion_leaves_the_previous_folder_untouched(rmt_release, tmp_path, monkeypatch):
    out = tmp_path / "out"
    convert("rmt_t", rmt_release[0], out, org=ORG)
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


def test_publish_dry_run_lists_files_and_target_without_network(rmt_converted, offline_cache, capsys):
    assert main(["publish", str(rmt_converted), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{constants.ENDPOINT}/{ORG}/rmt_t" in out  # the org recorded at convert time
    for name in ("model.safetensors", "config.json", "README.md"):
        assert name in out
    assert "MB" in out and "nothing was uploaded" in out

    assert main(["publish", str(rmt_converted), "--repo", "me/something"]) == 1  # offline: refused in one line
    captured = capsys.readouterr()
    assert f"points users to {ORG}/rmt_t, not me/something; zoo.load('rmt_t', pretrained=True) will not" in captured.err
    assert captured.err.strip().splitlines()[-1].startswith("error: ") and "HF_HUB_OFFLINE" in captured.err

    assert main(["publish", str(rmt_converted.parent)]) == 1
    assert "is not a converted folder" in capsys.readouterr().err


def test_publish_creates_repo_and_uploads_exactly_the_planned_files(rmt_converted, monkeypatch):
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kwargs):
            calls["create"] = (repo_id, kwargs)

        def upload_folder(self, **kwargs):
            calls["upload"] = kwargs
            return type("Commit", (), {"commit_url": f"https://hf.test/{kwargs['repo_id']}/commit/1"})()

    import hub.publish

    monkeypatch.setattr(hub.publish, "HfApi", FakeApi)
    url = publish(plan_upload(rmt_converted, "me/rmt_t", private=True), token="tok")
    assert url == "https://hf.test/me/rmt_t/commit/1"
    assert calls["token"] == "tok"
    assert calls["create"] == ("me/rmt_t", {"repo_type": "model", "private": True, "exist_ok": True})
    assert sorted(calls["upload"]["allow_patterns"]) == ["README.md", "config.json", "model.safetensors"]


def test_python_m_hub_download_offline(rmt_converted, offline_cache, capsys):
    put_in_cache(offline_cache, f"{ORG}/rmt_t", {"model.safetensors": rmt_converted / "model.safetensors"})
    env = {**os.environ, "HF_HUB_CACHE": str(offline_cache), "HF_HUB_OFFLINE": "1", ORG_ENV: ORG}

    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "hub", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT)

    found = run("download", "rmt_t")
    assert found.returncode == 0 and found.stdout.strip().endswith("model.safetensors"), found.stderr
    assert main(["download", "rmt_b", "--org", ORG]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{ORG}/rmt_b" in err and "Traceback" not in err


def test_card_rows_come_from_the_harness_reader_newest_first_wins(tmp_path):
    old = {"model": "rmt_t", "backend": "eager", "precision": "fp32", "batch_size": 8, "input_size": [224, 224],
           "device": "cpu", "status": "ok", "throughput_ips": 1.0}  # fmt: skip
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (old, {**old, "throughput_ips": 2.0})) + "\n{cut short\n")
    rows = read_results(path, "rmt_t")
    assert [r["throughput_ips"] for r in rows] == [2.0]  # a re-measured row replaces the older number
