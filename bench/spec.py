"""What one benchmark row is, and how a run measures: plain dataclasses shared by the CLI, runner and worker."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

# 2: rows gained schema_version, mode, tf32, model_kwargs, times_ms, p95, numerics and the output check.
SCHEMA_VERSION = 2

# amp-* run an fp32 model under torch.autocast; fp16/bf16 cast the weights and inputs.
PRECISIONS = ("fp32", "fp16", "bf16", "amp-fp16", "amp-bf16")
# `amp` follows timm's benchmark.py (float16 autocast); `autocast` is this harness's bf16 autocast.
PRECISION_ALIASES = {"amp": "amp-fp16", "autocast": "amp-bf16", "float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
TRAIN_PRECISIONS = ("fp32", "amp-fp16", "amp-bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MODES = ("infer", "train")
# mismatch: measured, but the output differs from eager beyond the precision's tolerance.
STATUSES = ("ok", "mismatch", "oom", "unavailable", "error")

# The fields that make two rows "the same measurement" (used by --resume and by report de-duplication), with the
# value a row written before the field existed stands for.
KEY_DEFAULTS: dict[str, Any] = {
    "model": None, "backend": None, "precision": None, "batch_size": None, "input_size": (), "device": None,
    "channels_last": False, "features_only": False, "compile_mode": None, "mode": "infer", "tf32": False,
    "model_kwargs": {}, "grad_checkpointing": False,
}


def _key_value(name: str, value: Any) -> Any:
    if name == "input_size":
        return tuple(value or ())
    if name == "model_kwargs":
        return json.dumps(dict(value or {}), sort_keys=True, default=str)
    return value


def row_key(row: dict[str, Any]) -> tuple:
    """Identity of a measurement, from a result row or a RowSpec dict."""
    return tuple(_key_value(k, row.get(k, d)) for k, d in KEY_DEFAULTS.items())


@dataclass(frozen=True)
class RowSpec:
    """One cell of the grid: model x backend x precision x batch size x input size (+ mode and layout options)."""

    model: str
    backend: str
    precision: str
    batch_size: int
    input_size: tuple[int, int]
    device: str
    channels_last: bool = False
    features_only: bool = False
    compile_mode: str | None = None  # only the compile backend has one
    mode: str = "infer"
    tf32: bool = False  # TF32 matmuls/convolutions and cudnn.benchmark, as timm's benchmark.py sets them
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    grad_checkpointing: bool = False  # train mode only

    def fields(self) -> dict[str, Any]:
        """The row's identifying fields, in the JSON form rows store."""
        return {**asdict(self), "input_size": list(self.input_size), "model_kwargs": dict(self.model_kwargs)}

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> "RowSpec":
        return cls(**{**fields, "input_size": tuple(fields["input_size"]), "model_kwargs": tuple(fields["model_kwargs"].items())})

    def key(self) -> tuple:
        return row_key(self.fields())

    def group(self) -> tuple:
        """Rows that differ only in batch and input size run in one worker process."""
        return tuple(v for name, v in zip(KEY_DEFAULTS, self.key()) if name not in ("batch_size", "input_size"))


@dataclass(frozen=True)
class Settings:
    """How every row of a run is measured; recorded in each row so a number carries its method."""

    warmup: int = 10
    iters: int = 50
    threads: int | None = None
    flops: bool = True
    data: str | None = None
    max_samples: int | None = None
    pretrained: bool = False
    checkpoints: dict[str, str] = field(default_factory=dict)
    imports: tuple[str, ...] = ()
    timeout_s: float = 1800.0
    backend_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per backend name, its Options fields

    def weights_for(self, model: str) -> bool | str:
        """What `zoo.load(pretrained=...)` gets for this model: a checkpoint path, Hub weights, or none."""
        return self.checkpoints.get(model, self.pretrained)
