"""Malformed checkpoints are named as such, by zoo.load and by `python -m hub convert` alike: keys that are no
names, sparse, meta or quantized tensors, integer, bool or complex values for float parameters, NaN or infinite
weights, a pickle weights_only refuses (unsafe, not damaged); a safetensors file named `.pth` reads; `pretrained=''`
is refused; `hub publish` checks dtypes as well as names and shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import zoo
from hub.__main__ import main as hub_main
from hub.publish import _check_weights_fit


class _Unsafe:
    def __reduce__(self):
        return (torch.hub.load, ("someone/repo", "model"))


@pytest.fixture(scope="module")
def rmt_t_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in zoo.load("rmt_t").state_dict().items()}


def _weight(state: dict) -> str:
    return next(k for k, v in state.items() if v.ndim == 2 and v.is_floating_point())


MALFORMED = {
    "integer keys": (lambda s, k: {0: s[k], **s}, "keys must be parameter names, and 0 is not"),
    "sparse": (lambda s, k: {**s, k: s[k].to_sparse()}, "(sparse)"),
    "meta": (lambda s, k: {**s, k: s[k].to("meta")}, "(meta, without values)"),
    "quantized": (lambda s, k: {**s, k: torch.quantize_per_tensor(s[k], 0.1, 0, torch.qint8)}, "(quantized)"),
    "integer values": (lambda s, k: {**s, k: s[k].to(torch.int32)}, "not floating point"),
    "bool values": (lambda s, k: {**s, k: s[k] > 0}, "not floating point"),
    "complex values": (lambda s, k: {**s, k: s[k].to(torch.complex64)}, "floating"),
    "NaN": (lambda s, k: {**s, k: torch.full_like(s[k], float("nan"))}, "NaN or infinite values in 1 tensor(s)"),
    "Inf": (lambda s, k: {**s, k: s[k].index_fill(0, torch.tensor([0]), float("inf"))}, "weights are damaged"),
    "unsafe pickle": (lambda s, k: {**s, "extra": _Unsafe()}, "as unsafe: it asks to import torch.hub.load"),
}


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_checkpoint_is_named_by_zoo_load_and_by_convert(kind, rmt_t_state, tmp_path, capsys):
    make, says = MALFORMED[kind]
    path = tmp_path / "ckpt.pth"
    torch.save(make(dict(rmt_t_state), _weight(rmt_t_state)), path)
    with pytest.raises((zoo.CheckpointError, zoo.CheckpointMismatchError)) as refused:
        zoo.load("rmt_t", pretrained=path)
    assert says in str(refused.value) and len(str(refused.value).splitlines()) == 1
    out = tmp_path / "out"
    assert hub_main(["convert", str(path), str(out), "--model", "rmt_t"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and "Traceback" not in err, err
    assert "convert" not in err.lower()  # the source is named, not the conversion
    assert not out.exists()


def test_a_safetensors_file_named_pth_reads(rmt_t_state, tmp_path):
    path = tmp_path / "weights.pth"
    save_file(rmt_t_state, str(path))
    model = zoo.load("rmt_t", pretrained=path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in rmt_t_state.items())


@pytest.mark.parametrize("given", ["", "  "])
def test_an_empty_pretrained_path_is_refused_not_random(given):
    with pytest.raises(ValueError, match="names no checkpoint"):
        zoo.load("rmt_t", pretrained=given)


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.uint8])
def test_publish_checks_the_weights_dtypes(dtype, rmt_t_state, tmp_path):
    key = _weight(rmt_t_state)
    path = tmp_path / "model.safetensors"
    save_file({**rmt_t_state, key: rmt_t_state[key].to(dtype)}, str(path))
    with pytest.raises(zoo.CheckpointMismatchError, match=f"{key} \\(checkpoint {dtype}, model torch.float32\\)"):
        _check_weights_fit(Path(path), "rmt_t")


def test_what_load_state_dict_still_refuses_is_the_zoos_checkpoint_error(rmt_t_state, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    torch.save(rmt_t_state, path)

    def refuse(self, state, strict=True):
        raise RuntimeError("Error(s) in loading state_dict for RMT:\n\tsize mismatch")

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", refuse)
    with pytest.raises(zoo.CheckpointError, match=r"could not be loaded into rmt_t: Error\(s\) in loading state_dict"):
        zoo.load("rmt_t", pretrained=path)


def test_convert_blames_a_source_whose_outputs_are_no_numbers(rmt_t_state, tmp_path, capsys):
    path = tmp_path / "ckpt.pth"
    torch.save({k: v * 1e30 if v.is_floating_point() else v for k, v in rmt_t_state.items()}, path)  # overflows
    out = tmp_path / "out"
    assert hub_main(["convert", str(path), str(out), "--model", "rmt_t"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"Checkpoint {path} gives NaN or infinite outputs" in err, err
    assert not out.exists()
