"""The Hub layer offline: convert, a Hub cache built here, `zoo.load(name, pretrained=True)`, publish, and errors.

Nothing reaches the network: huggingface_hub runs in offline mode against a cache laid out the way it lays
one out (blobs, snapshots/<commit>, refs/<revision>). "Official" checkpoints are made here from the official
key lists in tests/fixtures (RMT, InternImage) or from timm's own layout (Swin, MaxViT).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from huggingface_hub import HfApi, ModelCard, constants
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import zoo
from hub.__main__ import main
from hub.card import read_results, render_card
from hub.convert import ConversionError, convert, file_sha256
from zoo._hub import REVISION_ENV, WeightsUnavailableError, fetch_weights
from zoo.rmt import ORG_ENV
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


@pytest.fixture(scope="module")
def bare_converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`python -m hub convert` of a bare safetensors state dict with --results-dataset, run as from a source tree that
    is not installed (no rmt-zoo distribution metadata) under umask 027: (OUT_DIR, what it printed)."""
    import importlib.metadata

    def not_installed(real):
        def lookup(name, *args, **kwargs):
            if name.lower().replace("_", "-") == "rmt-zoo":
                raise importlib.metadata.PackageNotFoundError(name)
            return real(name, *args, **kwargs)

        return lookup

    tmp = tmp_path_factory.mktemp("bare")
    save_file(official_state("rmt_t"), str(tmp / "rmt_t.safetensors"))
    old_umask = os.umask(0o027)
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()) as printed:
            for name in ("version", "distribution", "metadata"):
                mp.setattr(importlib.metadata, name, not_installed(getattr(importlib.metadata, name)))
            argv = [str(tmp / "rmt_t.safetensors"), str(tmp / "out"), "--results-dataset", "bench-org/rmt-results"]
            assert main(["convert", "--model", "rmt_t", *argv]) == 0
    finally:
        os.umask(old_umask)
    return tmp / "out", printed.getvalue()


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> dict:
    """HfApi replaced by a recorder: the repos it would create and each commit's files with their bytes."""
    calls: dict = {"repos": [], "commits": []}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kwargs):
            calls["repos"].append((repo_id, kwargs))

        def create_commit(self, repo_id, operations, *, commit_message, repo_type=None, **kwargs):
            files = {}
            for op in operations:
                op.path_or_fileobj.seek(0)
                files[op.path_in_repo] = op.path_or_fileobj.read()
            calls["commits"].append(
                {"repo_id": repo_id, "repo_type": repo_type, "message": commit_message, "files": files}
            )
            return SimpleNamespace(commit_url=f"https://hf.test/{repo_id}/commit/1")

        def __getattr__(self, name):
            raise AssertionError(f"HfApi.{name} is not how this project uploads")

    import hub.publish

    monkeypatch.setattr(hub.publish, "HfApi", FakeApi)
    return calls


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


def test_convert_runs_from_a_source_tree_without_installed_metadata(bare_converted):
    """The version has one home (hub.__version__, which pyproject.toml reads), so no metadata lookup can fail."""
    import tomllib

    import hub

    config = json.loads((bare_converted[0] / "config.json").read_text())
    assert config["provenance"]["converter"] == f"rmt-zoo {hub.__version__} (python -m hub convert)"
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "hub.__version__"}


def test_converted_folder_has_a_plain_mkdir_mode_and_reads_well(bare_converted):
    out, printed = bare_converted
    assert stat.S_IMODE(out.stat().st_mode) == 0o750  # 0777 under the umask 027, not mkdtemp's 0700
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o640}
    assert printed.startswith("Took the only state dict (entry '(bare)') of rmt_t.safetensors: "), printed
    assert "the the" not in printed.lower() and "the the" not in (out / "README.md").read_text().lower()


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
    assert config["num_features"] == 1024 and config["num_classes"] == 1000
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
        (
            ["convert", "--model", "rmt_t", str(rmt_release[0]), str(tmp_path / "e"), "--results", str(tmp_path / "r")],
            "Cannot read the results file",
        ),
        (
            ["convert", "--model", "rmt_t", str(rmt_release[0]), str(tmp_path / "f.txt" / "out")],
            "which is a file, not a folder",
        ),
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


def test_cli_convert_prints_the_zoos_own_refusal_of_an_unsafe_pickle(tmp_path, capsys):
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
        assert main(["convert", "--model", "rmt_t", *argv, "--force"]) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith(f"error: {named} ") and err.count("\n") == 1 and "lies inside OUT_DIR" in err, err
        assert _folder_state(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "out", "out-link"]


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


def test_publish_names_a_config_field_of_the_wrong_type(rmt_converted, tmp_path, capsys):
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


def test_card_shows_only_finite_numbers_as_measured(rmt_converted, tmp_path, capsys):
    base = {"model": "rmt_t", "backend": "eager", "precision": "fp32", "batch_size": 1, "input_size": [224, 224],
            "device": "cpu", "status": "ok", "throughput_ips": 12.5}  # fmt: skip
    bad = [{"throughput_ips": float("nan")}, {"latency_ms": {"p50": float("inf")}}, {"top1": "82.4"},
           {"throughput_ips": True}, {"throughput_ips": -float("inf")}]  # fmt: skip
    rows = [base] + [{**base, "batch_size": 2 + i, **fields} for i, fields in enumerate(bad)]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json writes NaN and Infinity, and reads them back
    kept = read_results(path, "rmt_t")
    assert kept == [base]
    skipped, left = capsys.readouterr().err.strip().splitlines()
    assert skipped.startswith(f"note: skipped 2 line(s) of {path}")  # the harness's reader: a string and a bool
    assert left.startswith(f"note: left 3 row(s) of {path} for rmt_t off the card: ")  # finite numbers only
    assert "throughput_ips=nan" in left and "latency_ms.p50=inf" in left and "throughput_ips=-inf" in left
    text = render_card(json.loads((rmt_converted / "config.json").read_text()), kept, path.name)
    table = text[text.index("## Measured numbers") : text.index("## Provenance")]
    assert table.count("\n| eager |") == 1 and "| 12.5 |" in table


# ---------------------------------------------------------------- benchmark results as a dataset repo


def bench_rows() -> list[dict]:
    """Rows as the harness writes them: two measured on a GPU, one failed."""
    env = {
        "device_name": "NVIDIA H100 80GB HBM3",
        "torch": "2.9.0+cu128",
        "timm": "1.0.20",
        "git_commit": "abc123-dirty",
    }
    base = {"schema_version": 2, "backend": "eager", "precision": "amp-bf16", "batch_size": 64,
            "input_size": [224, 224], "device": "cuda", "status": "ok", "env": env,
            "command": "python -m bench.suite --out results/h100", "timestamp": "2025-01-02T03:04:05+00:00",
            "latency_ms": {"p50": 20.5}}  # fmt: skip
    return [
        {**base, "model": "rmt_t", "throughput_ips": 3120.5},
        {**base, "model": "swin_t", "throughput_ips": 4410.0, "timestamp": "2025-01-02T04:00:00+00:00"},
        {**base, "model": "rmt_s", "backend": "tensorrt", "status": "error", "reason": "export failed",
         "command": "python bench.py --models rmt_s --backend tensorrt"},
    ]  # fmt: skip


def test_push_results_uploads_rows_table_plot_and_card_as_a_dataset_repo(fake_hub, tmp_path, capsys):
    from huggingface_hub import DatasetCard

    from bench import load_results
    from bench.report import render_table
    from hub.results import push_results

    rows = bench_rows()
    sources = [str(tmp_path / "private-home" / "results.jsonl")]
    printed = push_results(rows, "me/bench", sources=sources, dry_run=False, private=True, token="tok")
    assert printed.endswith("Uploaded: https://hf.test/me/bench/commit/1")
    assert fake_hub["repos"] == [("me/bench", {"repo_type": "dataset", "private": True, "exist_ok": True})]
    [commit] = fake_hub["commits"]
    files = commit["files"]
    assert commit["repo_type"] == "dataset" and fake_hub["token"] == "tok"
    assert sorted(files) == ["README.md", "plot.png", "results.csv", "results.jsonl", "table.md"]
    (tmp_path / "back.jsonl").write_bytes(files["results.jsonl"])
    assert load_results(tmp_path / "back.jsonl") == rows  # the harness reads the uploaded rows back unchanged
    assert files["results.csv"].decode() == render_table(rows, "csv")
    assert files["table.md"].decode() == render_table(rows, "github") + "\n"
    assert files["plot.png"].startswith(b"\x89PNG")

    card = DatasetCard(files["README.md"].decode())  # the YAML front matter parses
    assert card.data.configs == [{"config_name": "default", "data_files": "results.csv"}]
    assert "benchmark" in card.data.tags
    for needle in ("NVIDIA H100 80GB HBM3", "torch 2.9.0+cu128; timm 1.0.20", "abc123-dirty",
                   "python -m bench.suite --out results/h100", "python bench.py --models rmt_s --backend tensorrt",
                   "3 rows: 2 ok, 1 error", "2025-01-02T03:04:05+00:00 to 2025-01-02T04:00:00+00:00", "rmt-zoo",
                   "`results.jsonl`", 'hf_hub_download("me/bench", "results.jsonl", repo_type="dataset")',
                   "![accuracy against throughput](plot.png)"):  # fmt: skip
        assert needle in card.text, needle
    assert "private-home" not in card.text and "private-home" not in commit["message"]  # local paths stay local


def test_push_results_dry_run_lists_files_and_uploads_nothing(fake_hub):
    from hub.results import push_results

    printed = push_results(bench_rows(), "me/bench", sources=["r.jsonl"], dry_run=True, private=False, token=None)
    lines = printed.splitlines()
    assert lines[0].startswith("Would upload 5 files (") and " from 3 rows of r.jsonl to " in lines[0]
    assert f"{constants.ENDPOINT}/datasets/me/bench (public dataset repo, created if missing):" in lines[0]
    assert sorted(line.split()[-1] for line in lines[1:-1]) == sorted(
        ["README.md", "plot.png", "results.csv", "results.jsonl", "table.md"]
    )
    assert all(line.split()[1] in ("B", "KB") for line in lines[1:-1]) and lines[-1] == "Dry run: nothing was uploaded."
    assert fake_hub == {"repos": [], "commits": []}


def test_push_results_errors_are_one_sentence(fake_hub, offline_cache, monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError

    import hub.publish
    from hub.results import push_results

    def refuse(self, repo_id, **kwargs):
        # the parts of the HTTP client's response that huggingface_hub reads (its client differs by version)
        raise HfHubHTTPError("401 Unauthorized", response=SimpleNamespace(status_code=401, headers={}, request=None))

    kwargs = dict(sources=["r.jsonl"], dry_run=False, private=False, token=None)
    with pytest.raises(PublishError) as bad_id:
        push_results(bench_rows(), "me/bench/x", **kwargs)
    with pytest.raises(PublishError) as no_rows:
        push_results([], "me/bench", **kwargs)
    with monkeypatch.context() as patch, pytest.raises(PublishError) as unauthorized:
        patch.setattr(hub.publish.HfApi, "create_repo", refuse)
        push_results(bench_rows(), "me/bench", **kwargs)
    with monkeypatch.context() as patch, pytest.raises(PublishError) as offline:
        patch.setattr(hub.publish, "HfApi", HfApi)  # the real one, in offline mode (offline_cache)
        push_results(bench_rows(), "me/bench", **kwargs)
    assert "'me/bench/x' is not a valid Hub repo id" in str(bad_id.value)
    assert "no benchmark rows" in str(no_rows.value)
    assert "HTTP 401, not logged in (run `hf auth login` or pass --token)" in str(unauthorized.value)
    assert "HF_HUB_OFFLINE is set" in str(offline.value)
    for error in (bad_id, no_rows, unauthorized, offline):
        assert one_sentence(str(error.value)), error.value
    assert fake_hub["commits"] == []


def test_card_links_the_results_dataset_and_convert_checks_its_id(bare_converted, tmp_path, capsys):
    card = (bare_converted[0] / "README.md").read_text()
    assert f"Full benchmark results: {constants.ENDPOINT}/datasets/bench-org/rmt-results" in card
    argv = ["convert", "--model", "rmt_t", "nope.pth", str(tmp_path / "out"), "--results-dataset", "bench org/x"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == "error: 'bench org/x' is not a valid Hub repo id (ORG/NAME: letters, digits, -, _ and .).\n"
    assert list(tmp_path.iterdir()) == []


def test_report_push_to_hub_dry_run_through_the_bench_cli(tmp_path, capsys):
    from bench import cli
    from bench.results import append_row

    path = tmp_path / "r.jsonl"
    append_row(
        path,
        {
            "model": "rmt_t",
            "backend": "eager",
            "precision": "fp32",
            "batch_size": 1,
            "input_size": [224, 224],
            "device": "cpu",
            "status": "ok",
            "throughput_ips": 12.5,
            "env": {"device_name": "Test CPU"},
        },
    )
    assert cli.main(["report", str(path), "--push-to-hub", "my-org/rmt-results", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (
        "datasets/my-org/rmt-results" in out
        and "results.jsonl" in out
        and out.rstrip().endswith("Dry run: nothing was uploaded.")
    )
    assert cli.main(["report", str(path), "--push-to-hub", "not a repo"]) == cli.EXIT_USAGE
    assert "is not a valid Hub repo id" in capsys.readouterr().err
    assert cli.main(["report", str(path), "--dry-run"]) == cli.EXIT_USAGE
