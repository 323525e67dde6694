"""Weights through a Hub cache built here, offline (zoo/_hub.py, `zoo.load(name, pretrained=True)`, `python -m hub
download`): every family round-trips, and every failure is one sentence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import zoo
from hub.__main__ import main
from hub.convert import convert
from zoo import HUB_REVISION_ENV as REVISION_ENV, WeightsUnavailableError, fetch_weights
from zoo.rmt import ORG_ENV


REPO_ROOT = Path(__file__).resolve().parents[1]


def test_rmt_round_trip_by_name_with_org_and_revision(
    rmt_release, rmt_converted, offline_cache, monkeypatch, hub_org, put_in_cache, small_logits
):
    reference = small_logits(zoo.load("rmt_t", pretrained=rmt_release[0]))
    put_in_cache(offline_cache, f"{hub_org}/rmt_t", {"model.safetensors": rmt_converted / "model.safetensors"})
    monkeypatch.setenv(ORG_ENV, hub_org)
    model = zoo.load("rmt_t", pretrained=True)
    assert model.load_report.source.startswith(str(offline_cache))
    assert torch.equal(small_logits(model), reference)
    assert torch.equal(small_logits(timm.create_model("rmt_t", pretrained=True).eval()), reference)

    # A revision other than main is taken from ZOO_HUB_REVISION.
    put_in_cache(offline_cache, f"{hub_org}/rmt_t", {"model.safetensors": rmt_converted / "model.safetensors"}, "v2")
    monkeypatch.setenv(REVISION_ENV, "v3")
    with pytest.raises(WeightsUnavailableError, match="at revision v3"):
        zoo.load("rmt_t", pretrained=True)
    monkeypatch.setenv(REVISION_ENV, "v2")
    assert "/snapshots/" in str(fetch_weights(zoo.info("rmt_t")))


@pytest.mark.e2e  # the slow tier: full-size models converted and loaded, 30-60 s each
def test_internimage_round_trip_official_and_hub_layout(
    offline_cache, tmp_path, monkeypatch, deit_checkpoint, official_state, put_in_cache, small_logits
):
    state = official_state("internimage_t")
    source = deit_checkpoint(tmp_path / "internimage_t_1k_224.pth", state, None)
    out = convert("internimage_t", source, tmp_path / "internimage_t").out_dir
    assert json.loads((out / "config.json").read_text())["provenance"]["entry"] == "model"

    repo = zoo.info("internimage_t").hf_hub_id
    assert repo == "OpenGVLab/internimage_t_1k_224"
    put_in_cache(offline_cache, repo, {"model.safetensors": out / "model.safetensors"})
    model = zoo.load("internimage_t", pretrained=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())  # official names, no renaming
    reference = small_logits(model)

    # OpenGVLab's own repos hold the transformers-style port: keys prefixed "model.".
    hub_layout = {f"model.{k}": v for k, v in load_file(str(out / "model.safetensors")).items()}
    save_file(hub_layout, str(tmp_path / "hub.safetensors"))
    put_in_cache(offline_cache, repo, {"model.safetensors": tmp_path / "hub.safetensors"}, "v")
    monkeypatch.setenv(REVISION_ENV, "v")
    assert torch.equal(small_logits(zoo.load("internimage_t", pretrained=True)), reference)


@pytest.mark.e2e  # the slow tier: full-size models converted and loaded, 30-60 s each
@pytest.mark.parametrize("name", ["swin_t", "maxvit_t"])
def test_timm_families_round_trip(name, offline_cache, tmp_path, put_in_cache, timm_state):
    state = timm_state(name)
    save_file(state, str(tmp_path / "source.safetensors"))
    out = convert(name, tmp_path / "source.safetensors", tmp_path / name).out_dir
    repo = zoo.info(name).hf_hub_id
    assert repo.startswith("timm/")
    put_in_cache(offline_cache, repo, {"model.safetensors": out / "model.safetensors"})
    model = zoo.load(name, pretrained=True)
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)


@pytest.mark.e2e  # the slow tier: full-size models converted and loaded, 30-60 s each
def test_timm_loads_a_converted_folder_by_hf_hub_local_dir_file_and_checkpoint_path(
    rmt_release, rmt_converted, offline_cache, tmp_path, put_in_cache, small_logits
):
    """The folder `python -m hub convert` writes, uploaded anywhere, loads through timm's own ways of asking."""
    reference = small_logits(zoo.load("rmt_t", pretrained=rmt_release[0]))
    repo = "someorg/some-name"  # neither the registry's organisation nor RMT_HUB_ORG (unset here)
    put_in_cache(offline_cache, repo, {f: rmt_converted / f for f in ("model.safetensors", "config.json", "README.md")})
    model = timm.create_model(f"hf-hub:{repo}", pretrained=True).eval()
    assert "models--someorg--some-name" in model.load_report.source
    assert torch.equal(small_logits(model), reference)
    assert timm.data.resolve_data_config({}, model=model)["crop_pct"] == 0.875

    local = timm.create_model(f"local-dir:{rmt_converted}", pretrained=True).eval()
    assert local.load_report.source == str(rmt_converted / "model.safetensors")
    assert torch.equal(small_logits(local), reference)
    weights = str(rmt_converted / "model.safetensors")
    overlay = timm.create_model("rmt_t", pretrained=True, pretrained_cfg_overlay=dict(file=weights)).eval()
    assert torch.equal(small_logits(overlay), reference)
    # checkpoint_path is timm's own loader, for the model's own key layout (what timm's train.py saves).
    own = tmp_path / "own.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(own))
    assert torch.equal(small_logits(timm.create_model("rmt_t", checkpoint_path=str(own)).eval()), reference)
    # A converted folder given to zoo.load directly is read like local-dir.
    assert torch.equal(small_logits(zoo.load("rmt_t", pretrained=rmt_converted)), reference)


def test_missing_repo_offline_is_one_sentence_naming_where_and_what_to_do(offline_cache, monkeypatch, one_sentence):
    monkeypatch.setenv(ORG_ENV, "someone")
    with pytest.raises(WeightsUnavailableError) as err:
        zoo.load("rmt_t", pretrained=True)
    msg = str(err.value)
    assert one_sentence(msg), msg
    for part in ("someone/rmt_t", "model.safetensors", "revision main", "HF_HUB_OFFLINE", str(offline_cache),
                 "python -m hub convert --model rmt_t", 'pretrained="'):  # fmt: skip
        assert part in msg, (part, msg)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_missing_file_in_existing_repo_names_the_file(offline_cache, put_in_cache):
    put_in_cache(offline_cache, "OpenGVLab/internimage_t_1k_224", {"config.json": b"{}"})
    where = "model.safetensors or pytorch_model.bin in OpenGVLab/internimage_t_1k_224 at revision main"
    with pytest.raises(WeightsUnavailableError, match=where):
        fetch_weights(zoo.info("internimage_t"))


def test_pickle_fallback_loads_weights_but_refuses_code(
    offline_cache, tmp_path, evil_pickle, hub_org, official_state, put_in_cache
):
    repo = f"{hub_org}/rmt_t"
    # A repo with only pickled weights is used (weights_only=True)...
    state = official_state("rmt_t")
    torch.save({"model": state}, tmp_path / "good.bin")
    put_in_cache(offline_cache, repo, {"pytorch_model.bin": tmp_path / "good.bin"})
    model = zoo.load("rmt_t", pretrained=fetch_weights(zoo.info("rmt_t"), org=hub_org))
    assert torch.equal(model.state_dict()["head.weight"], state["head.weight"])
    # Where both exist, safetensors wins.
    save_file(state, str(tmp_path / "good.safetensors"))
    files = {"pytorch_model.bin": tmp_path / "good.bin", "model.safetensors": tmp_path / "good.safetensors"}
    put_in_cache(offline_cache, repo, files, "both")
    assert fetch_weights(zoo.info("rmt_t"), org=hub_org, revision="both").name == "model.safetensors"

    # ...but one that would run code when unpickled is refused, and the code never runs.
    marker = tmp_path / "pwned"
    (tmp_path / "evil.bin").write_bytes(evil_pickle({"model": state}, marker))
    put_in_cache(offline_cache, repo, {"pytorch_model.bin": tmp_path / "evil.bin"}, "evil")
    with pytest.raises(zoo.CheckpointError, match="Refused"):
        zoo.load("rmt_t", pretrained=fetch_weights(zoo.info("rmt_t"), org=hub_org, revision="evil"))
    assert not marker.exists()


def test_corrupted_safetensors_in_cache(offline_cache, rmt_converted, tmp_path, monkeypatch, hub_org, put_in_cache):
    data = (rmt_converted / "model.safetensors").read_bytes()
    put_in_cache(offline_cache, f"{hub_org}/rmt_t", {"model.safetensors": data[: len(data) // 2]})
    monkeypatch.setenv(ORG_ENV, hub_org)
    with pytest.raises(zoo.CheckpointError, match="not a readable safetensors file"):
        zoo.load("rmt_t", pretrained=True)


def test_wrong_size_checkpoint_names_keys(offline_cache, tmp_path, hub_org, official_state, put_in_cache):
    # RMT-S weights published under the RMT-T name: extra blocks and wider FFNs, all named.
    save_file(official_state("rmt_s"), str(tmp_path / "rmt_s.safetensors"))
    put_in_cache(offline_cache, f"{hub_org}/rmt_t", {"model.safetensors": tmp_path / "rmt_s.safetensors"})
    with pytest.raises(zoo.CheckpointMismatchError) as err:
        zoo.load("rmt_t", pretrained=fetch_weights(zoo.info("rmt_t"), org=hub_org))
    assert "unexpected: layers.0.blocks.2." in str(err.value) and "ffn.fc1.weight (checkpoint" in str(err.value)


@pytest.mark.e2e
def test_python_m_hub_download_offline(rmt_converted, offline_cache, capsys, hub_org, put_in_cache):
    put_in_cache(offline_cache, f"{hub_org}/rmt_t", {"model.safetensors": rmt_converted / "model.safetensors"})
    env = {**os.environ, "HF_HUB_CACHE": str(offline_cache), "HF_HUB_OFFLINE": "1", ORG_ENV: hub_org}

    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "hub", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT)

    found = run("download", "rmt_t")
    assert found.returncode == 0 and found.stdout.strip().endswith("model.safetensors"), found.stderr
    assert main(["download", "rmt_b", "--org", hub_org]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{hub_org}/rmt_b" in err and "Traceback" not in err


class _FakeApi:
    """huggingface_hub's HfApi with `model_info` answered here: no test touches the network."""

    calls: list = []
    answer: object = None

    def model_info(self, repo_id, **kwargs):
        _FakeApi.calls.append((repo_id, kwargs))
        if isinstance(_FakeApi.answer, BaseException):
            raise _FakeApi.answer
        return _FakeApi.answer


@pytest.fixture
def online(offline_cache, monkeypatch):
    """huggingface_hub online, with its metadata call and its downloads answered by fakes."""
    from huggingface_hub import constants

    import zoo._hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(zoo._hub, "HfApi", _FakeApi)
    monkeypatch.setattr(_FakeApi, "calls", [])
    downloads = []

    def download(repo, name, **kwargs):
        downloads.append(name)
        return str(offline_cache / name)

    monkeypatch.setattr(zoo._hub, "hf_hub_download", download)
    return downloads


def _http_error(cls, status):
    from httpx2 import Request, Response

    return cls("answered by the test", response=Response(status, request=Request("GET", "https://hub.invalid/x")))


def test_an_unpublished_repo_is_one_sentence_after_one_metadata_call(online, monkeypatch, one_sentence):
    from huggingface_hub.errors import RepositoryNotFoundError

    from zoo._hub import METADATA_TIMEOUT_S

    monkeypatch.setattr(_FakeApi, "answer", _http_error(RepositoryNotFoundError, 404))
    with pytest.raises(WeightsUnavailableError) as err:
        zoo.load("rmt_t", pretrained=True)
    msg = str(err.value)
    assert one_sentence(msg) and "the Hub has no repo rmt-zoo/rmt_t" in msg, msg
    assert 'pretrained="/path/to/RELEASE.pth"' in msg and 'pretrained="OUT_DIR"' in msg  # the two ways that work
    assert _FakeApi.calls == [("rmt-zoo/rmt_t", {"revision": None, "token": None, "timeout": METADATA_TIMEOUT_S})]
    assert online == []  # no download tried


@pytest.mark.parametrize(
    "failure, says",
    [(ConnectionError("no route to host"), "(ConnectionError)"), (TimeoutError(), "(TimeoutError in 2 s)")],
)
def test_an_unreachable_hub_is_one_sentence_without_retries(failure, says, online, monkeypatch, one_sentence):
    """No network is this machine's situation, said as such, with the two ways that work without the Hub."""
    monkeypatch.setattr(_FakeApi, "answer", failure)
    with pytest.raises(WeightsUnavailableError) as err:
        zoo.load("rmt_t", pretrained=True)
    msg = str(err.value)
    assert one_sentence(msg) and online == [] and len(_FakeApi.calls) == 1
    assert f"the Hugging Face Hub (https://huggingface.co) could not be reached from this machine {says}" in msg, msg
    assert "rmt-zoo/rmt_t at revision main is not in the local cache" in msg
    assert 'two ways work without the Hub: pass pretrained="/path/to/RELEASE.pth"' in msg
    assert 'and pass pretrained="OUT_DIR".' in msg and "hub publish" not in msg  # no way that needs the Hub


@pytest.mark.parametrize(("cause", "said"), [(ConnectionError("no route to host"), "(ConnectionError)"),
                                              (TimeoutError(), "(TimeoutError)")])  # fmt: skip
def test_a_download_that_cannot_reach_the_hub_says_so(cause, said, online, monkeypatch, one_sentence):
    """A download's wait is huggingface_hub's own (HF_HUB_ETAG_TIMEOUT), not the metadata call's 2 s: none is named."""
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.hf_api import ModelInfo as HubModelInfo

    import zoo._hub

    def unreachable(repo, name, **kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files") from cause

    monkeypatch.setattr(
        _FakeApi, "answer", HubModelInfo(id="rmt-zoo/rmt_t", siblings=[{"rfilename": "model.safetensors"}])
    )
    monkeypatch.setattr(zoo._hub, "hf_hub_download", unreachable)
    with pytest.raises(WeightsUnavailableError) as err:
        zoo.load("rmt_t", pretrained=True)
    msg = str(err.value)
    assert one_sentence(msg) and f"could not be reached from this machine {said}," in msg, msg
    assert "two ways work without the Hub" in msg and "hub publish" not in msg


def test_a_published_repo_downloads_only_the_file_it_holds(online, monkeypatch, rmt_converted):
    from huggingface_hub.hf_api import ModelInfo as HubModelInfo

    monkeypatch.setattr(
        _FakeApi, "answer", HubModelInfo(id="OpenGVLab/x", siblings=[{"rfilename": "pytorch_model.bin"}])
    )
    assert fetch_weights(zoo.info("internimage_t")).name == "pytorch_model.bin"
    assert online == ["pytorch_model.bin"]  # not model.safetensors first, which the repo does not have
    monkeypatch.setattr(_FakeApi, "answer", HubModelInfo(id="OpenGVLab/x", siblings=[{"rfilename": "README.md"}]))
    with pytest.raises(WeightsUnavailableError, match="the Hub has no model.safetensors or pytorch_model.bin in"):
        fetch_weights(zoo.info("internimage_t"))


def test_offline_makes_no_network_call(offline_cache, monkeypatch):
    import zoo._hub

    monkeypatch.setattr(zoo._hub, "HfApi", None)  # any call would fail with a TypeError
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE is set"):
        zoo.load("rmt_t", pretrained=True)


def test_zoo_list_shows_where_weights_can_be_had_today(capsys, monkeypatch):
    from zoo.__main__ import main as zoo_main

    monkeypatch.delenv(ORG_ENV, raising=False)
    assert zoo_main(["list", "rmt_t"]) == 0
    out = capsys.readouterr().out
    assert "official release: pretrained=PATH" in out and "rmt-zoo/rmt_t" not in out  # nothing is published there
    monkeypatch.setenv(ORG_ENV, "someone")
    assert zoo_main(["list", "rmt_t"]) == 0 and "someone/rmt_t" in capsys.readouterr().out
    assert zoo_main(["list", "swin_t"]) == 0 and "timm/swin_tiny_patch4_window7_224.ms_in1k" in capsys.readouterr().out


def test_an_unreachable_hub_leaves_the_cached_weights_usable(online, monkeypatch, offline_cache, put_in_cache):
    put_in_cache(offline_cache, "OpenGVLab/internimage_t_1k_224", {"model.safetensors": b"weights"})
    monkeypatch.setattr(_FakeApi, "answer", ConnectionError("no route to host"))
    assert fetch_weights(zoo.info("internimage_t")).read_bytes() == b"weights" and online == []
