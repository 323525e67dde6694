"""What one benchmark row is, and how a run measures: plain dataclasses shared by the CLI, runner and worker."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

BACKENDS = ("eager", "compile", "tensorrt")
# amp-* run an fp32 model under torch.autocast; fp16/bf16 cast the weights and inputs.
PRECISIONS = ("fp32", "fp16", "bf16", "amp-fp16", "amp-bf16")
PRECISION_ALIASES = {"autocast": "amp-bf16", "amp": "amp-bf16", "float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
STATUSES = ("ok", "oom", "unavailable", "error")

# The fields that make two rows "the same measurement" (used by --resume and by report de-duplication).
KEY_FIELDS = ("model", "backend", "precision", "batch_size", "input_size", "device", "channels_last", "features_only", "compile_mode")


def row_key(row: dict[str, Any]) -> tuple:
    """Identity of a measurement, from a result row or a RowSpec dict; input_size lists become tuples."""
    return tuple(tuple(row.get(k) or ()) if k == "input_size" else row.get(k) for k in KEY_FIELDS)


@dataclass(frozen=True)
class RowSpec:
    """One cell of the grid: model x backend x precision x batch size x input size (+ layout options)."""

    model: str
    backend: str
    precision: str
    batch_size: int
    input_size: tuple[int, int]
    device: str
    channels_last: bool = False
    features_only: bool = False
    compile_mode: str | None = None  # only the compile backend has one

    def key(self) -> tuple:
        return row_key(asdict(self))

    def group(self) -> tuple:
        """Rows sharing a model, backend, precision and layout run in one worker process."""
        return (self.model, self.backend, self.precision, self.device, self.channels_last, self.features_only, self.compile_mode)


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

    def weights_for(self, model: str) -> bool | str:
        """What `zoo.load(pretrained=...)` gets for this model: a checkpoint path, Hub weights, or none."""
        return self.checkpoints.get(model, self.pretrained)
