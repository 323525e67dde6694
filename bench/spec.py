"""What one benchmark row is, and how a run measures: plain dataclasses shared by the CLI, runner and worker."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .columns import get_field

# 2: rows gained schema_version, mode, tf32, model_kwargs, times_ms, p95, numerics and the output check.
# 3: `compile_mode` became the backend's own `backend_options`; weights, threads, data and max_samples identify a
#    row; energy fields. Readers take every version (see `row_key`).
SCHEMA_VERSION = 3

MODES = ("infer", "train")
# mismatch: measured, but the output differs from eager beyond the precision's tolerance.
STATUSES = ("ok", "mismatch", "oom", "unavailable", "error")
RANDOM_INIT = "random init"
HUB_WEIGHTS = "hub:"  # a row's weights from the Hub: "hub:ORG/NAME@REVISION"


def default_threads() -> int:
    """Every row's CPU threads unless --threads says otherwise: torch's own default here (OMP_NUM_THREADS where set,
    else one per core), recorded as a number so that a row always says how many it ran with."""
    import torch

    return torch.get_num_threads()


# The fields that make two rows "the same measurement" (used by --resume and by report de-duplication), with the
# value a row written before the field existed stands for. The machine (env.device_name) is part of the key too.
KEY_DEFAULTS: dict[str, Any] = {
    "model": None,
    "backend": None,
    "precision": None,
    "batch_size": None,
    "input_size": (),
    "device": None,
    "channels_last": False,
    "features_only": False,
    "backend_options": {},
    "mode": "infer",
    "tf32": False,
    "model_kwargs": {},
    "grad_checkpointing": False,
    "weights": RANDOM_INIT,
    "threads": None,
    "data": None,
    "max_samples": None,
}
# The fields of a key that rows sharing one worker process (one model build) have in common.
WORKER_FIELDS = (
    "model",
    "device",
    "features_only",
    "mode",
    "tf32",
    "model_kwargs",
    "grad_checkpointing",
    "weights",
    "threads",
    "data",
    "max_samples",
)


def backend_options(row: dict[str, Any]) -> dict[str, Any]:
    """A row's non-default backend options; schema-2 rows held compile's mode as `compile_mode`."""
    if "backend_options" in row:
        return dict(row["backend_options"] or {})
    mode = row.get("compile_mode")
    return {"mode": mode} if mode not in (None, "default") else {}


def _key_value(name: str, value: Any) -> Any:
    if name == "input_size":
        return tuple(value or ())
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def row_key(row: dict[str, Any], machine: str | None = None) -> tuple:
    """Identity of a measurement, from a result row (machine read from its env) or a RowSpec's fields (machine
    given: the device name where it runs)."""
    values = {k: row.get(k, d) for k, d in KEY_DEFAULTS.items()}
    values["backend_options"] = backend_options(row)
    machine = machine if machine is not None else get_field(row, "env.device_name")
    return (*(_key_value(k, v) for k, v in values.items()), machine)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message cut to its first line, for a row's one-sentence reason."""
    return (str(exc).strip().splitlines() or [""])[0][:limit]


class Unavailable(Exception):
    """A row that cannot be measured here for a known reason (a model without the capability it needs, a backend
    that refuses it); str(exc) is the row's one-sentence reason, `info` extra row fields. Its status: unavailable."""

    def __init__(self, reason: str, info: dict[str, Any] | None = None):
        super().__init__(reason)
        self.info = info or {}


@dataclass(frozen=True)
class RowSpec:
    """One cell of the grid: model x backend (with its options) x precision x batch size x input size, plus the
    layout, mode and run settings that change the number."""

    model: str
    backend: str
    precision: str
    batch_size: int
    input_size: tuple[int, int]
    device: str
    channels_last: bool = False
    features_only: bool = False
    backend_options: tuple[tuple[str, Any], ...] = ()  # the backend's options that differ from its defaults
    mode: str = "infer"
    tf32: bool = False  # TF32 matmuls/convolutions and cudnn.benchmark, as timm's benchmark.py sets them
    model_kwargs: tuple[tuple[str, Any], ...] = ()  # passed to the model's builder
    grad_checkpointing: bool = False  # train mode only
    weights: str = RANDOM_INIT  # "hub:ORG/NAME@REVISION" or a checkpoint path otherwise
    threads: int = field(default_factory=default_threads)  # CPU threads (torch.set_num_threads), recorded as set
    data: str | None = None  # ImageFolder for accuracy
    max_samples: int | None = None

    def fields(self) -> dict[str, Any]:
        """The row's identifying fields, in the JSON form rows store."""
        return {
            **asdict(self),
            "input_size": list(self.input_size),
            "model_kwargs": dict(self.model_kwargs),
            "backend_options": dict(self.backend_options),
        }

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> "RowSpec":
        return cls(
            **{
                **fields,
                "input_size": tuple(fields["input_size"]),
                "model_kwargs": tuple(fields["model_kwargs"].items()),
                "backend_options": tuple(fields["backend_options"].items()),
            }
        )

    def __hash__(self) -> int:
        """By the row's JSON form, so option values that are lists (`out_indices=[1, 2]`) hash too."""
        return hash(json.dumps(self.fields(), sort_keys=True, default=str))

    def key(self, machine: str | None) -> tuple:
        return row_key(self.fields(), machine)

    def worker_key(self) -> tuple:
        """Rows with equal worker keys can share one worker process and one model build."""
        fields = self.fields()
        return tuple(_key_value(k, fields[k]) for k in WORKER_FIELDS)

    def pretrained(self) -> bool | str:
        """What `zoo.load(pretrained=...)` gets: Hub weights, a checkpoint path, or none."""
        if self.weights == "hub" or self.weights.startswith(HUB_WEIGHTS):  # "hub": a request from before the repo
            return True
        return False if self.weights == RANDOM_INIT else self.weights


@dataclass(frozen=True)
class Settings:
    """How every row of a run is measured; recorded in each row so a number carries its method."""

    warmup: int = 10
    iters: int = 50
    flops: bool = True
    imports: tuple[str, ...] = ()
    timeout_s: float = 1800.0


@dataclass(frozen=True)
class RunRequest:
    """One run, whole: what to measure, how, where its rows go and what to show while it runs. A launcher hands it
    to the runner (`runner.run(request)`) here or, pickled, inside a submitit job; a run option is one field here.

    `resume_from`: where --resume looks for rows already measured (default `results`), e.g. the file a job's shard
    belongs to. `budget_s`: no group starts after it is spent. `run_id` ties the rows of one launch's jobs.
    """

    specs: tuple[RowSpec, ...]
    settings: Settings
    results: str
    command: str
    resume: bool = False
    resume_from: str | None = None
    progress: bool = True
    verbose: bool = False
    budget_s: float | None = None
    run_id: str | None = None
