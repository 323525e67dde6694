"""The model card (README.md) of a converted folder: what the model is, how to load it, paper and measured numbers.

Everything on the card comes from the folder's config.json and, for measured numbers, from rows of the benchmark
harness's results JSONL; with no rows the card says so instead of quoting anything else.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import timm
from huggingface_hub import EvalResult, ModelCardData, constants

import zoo
from bench.columns import get_field, markdown_cell, markdown_code
from bench.report import select_columns

__all__ = ["ResultsError", "read_results", "render_card", "hub_url"]


# The harness's own columns (bench/report.py), so the card formats a number as every table does.
_MEASURED = select_columns(("backend", "precision", "batch", "input", "device", "img_s", "p50", "top1"))


def hub_url(repo_id: str, repo_type: str = "model") -> str:
    """The web page of a Hub repo (datasets live under /datasets/)."""
    return f"{constants.ENDPOINT}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"


class ResultsError(ValueError):
    """A results file given for the card that cannot be read."""


def read_results(path: Path, model_name: str) -> list[dict]:
    """The harness's newest rows measured for `model_name` (status "ok"), read by the harness's own reader; a row
    whose measured numbers are not all finite numbers is left out, with one note on stderr."""
    from bench import latest_rows, load_results

    try:
        rows = load_results(path)
    except OSError as e:
        raise ResultsError(f"Cannot read the results file {path} ({e.strerror or e}).") from None
    kept, left_out = [], []
    for row in latest_rows(rows):
        if row.get("model") != model_name or row.get("status") != "ok":
            continue
        bad = [why for c in _MEASURED if c.kind in ("number", "whole") and (why := _not_a_number(row, c.field))]
        if bad:
            left_out.append(", ".join(bad))
        else:
            kept.append(row)
    if left_out:
        shown = "; ".join(left_out[:3]) + ("; ..." if len(left_out) > 3 else "")
        print(
            f"note: left {len(left_out)} row(s) of {path} for {model_name} off the card: a measured field is not a "
            f"finite number ({shown}).",
            file=sys.stderr,
        )
    return kept


def _not_a_number(row: dict, field: str) -> str | None:
    """`field=value` where a measured field holds anything but a finite number (a string, NaN, inf, true), so it
    never reaches the card as a measurement; None where it is a number or not measured at all."""
    value = get_field(row, field)
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
        return None
    return f"{field}={value!r}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if value >= 100 else f"{value:.2f}"
    if isinstance(value, (list, tuple)):
        return "x".join(map(str, value))
    return str(value)


def _measured_table(rows: list[dict], source: str | None) -> str:
    if not rows:
        where = f" in {markdown_code(source)}" if source else ""
        return f"No measured numbers yet: this project's benchmark harness has no results for this model{where}."
    head = "| " + " | ".join(c.header for c in _MEASURED) + " |\n|" + "---|" * len(_MEASURED) + "\n"
    body = "".join("| " + " | ".join(markdown_cell(c.cell(row) or "-") for c in _MEASURED) + " |\n" for row in rows)
    return f"Measured with this project's benchmark harness (rows from {markdown_code(str(source))}):\n\n{head}{body}"


def _preprocessing(cfg: dict) -> str:
    size = cfg["input_size"][-1]
    resize = math.floor(size / cfg["crop_pct"])
    mean = ", ".join(f"{m:.3f}" for m in cfg["mean"])
    std = ", ".join(f"{s:.3f}" for s in cfg["std"])
    return (
        f"Resize the short side to {resize} ({cfg['interpolation']}), center-crop {size}x{size}, "
        f"scale to [0, 1] and normalise with mean ({mean}) and std ({std})."
    )


def _paper_table(metrics: dict, input_size: list[int]) -> str:
    return (
        f"| params (M) | GFLOPs at {input_size[-1]}x{input_size[-1]} | ImageNet-1K top-1 (%) |\n|---|---|---|\n"
        f"| {_cell(metrics['params_m'])} | {_cell(metrics['gflops'])} | {_cell(metrics['top1'])} |\n\n"
        f"Source: {metrics['note']}."
    )


def _front_matter(config: dict, code: str) -> str:
    """The card's YAML: timm as the library, and the paper's top-1 as an eval result (labelled as the paper's)."""
    top1 = config.get("paper_metrics", {}).get("top1")
    evals = [
        EvalResult(
            task_type="image-classification", dataset_type="imagenet-1k", dataset_name="ImageNet-1K",
            dataset_split="validation", metric_type="accuracy", metric_name="top-1 accuracy (paper)",
            metric_value=top1, source_name="paper", source_url=config.get("paper"),
        )
    ] if top1 is not None else None  # fmt: skip
    license_ = config.get("license")
    return ModelCardData(
        model_name=config["architecture"],
        library_name="timm",
        license=license_ or "other",
        # No license stated: "other" must name one, so the card points at the release that states none.
        license_name=None if license_ else "no-license-stated",
        license_link=None if license_ else code or None,
        tags=["image-classification", config["family"], "timm"],
        datasets=["imagenet-1k"],
        metrics=["accuracy"],
        pipeline_tag="image-classification",
        eval_results=evals,
    ).to_yaml()


def render_card(
    config: dict, rows: list[dict], results_name: str | None = None, results_dataset: str | None = None
) -> str:
    """README.md for a folder described by `config` (see hub.convert), with measured `rows` if any, pointing at the
    dataset repo `results_dataset` (see hub.results) for the full benchmark."""
    name, family = config["architecture"], config["family"]
    prov, pre = config["provenance"], config["pretrained_cfg"]
    repo = pre["hf_hub_id"]
    known = zoo.families().get(family)  # what the family is and its official code, from the registry
    what = known.description if known else f"{name}, an image classification model"
    code = known.code if known else config.get("paper") or ""
    front = _front_matter(config, code)
    org = repo.split("/", 1)[0]
    model_info = zoo.info(name)
    default_org = (model_info.hf_hub_id or "").split("/", 1)[0]
    env = f"{model_info.hub_org_env}={org}" if model_info.hub_org_env and org != default_org else ""
    timm_line = (
        f'After `import zoo`, `timm.create_model("{name}", pretrained=True)` does the same, and so does\n'
        f'`timm.create_model("hf-hub:{repo}", pretrained=True)`, which reads this repository\'s config.json.\n'
        if timm.is_model(name)
        else ""
    )
    where_env = f" and `{env}` in the environment (the organisation `zoo` takes RMT weights from)" if env else ""
    commit = f", commit {prov['converter_commit']}" if prov["converter_commit"] else ""
    full_results = f"\n\nFull benchmark results: {hub_url(results_dataset, 'dataset')}" if results_dataset else ""
    source = markdown_code(prov["source_file"])  # a file name is data: a backtick or newline in it stays in the span
    license_text = config.get("license") or "not stated by the official release; ask its authors before redistributing"
    return f"""---
{front}
---
# {name}

{what}. This repository holds its ImageNet-1K classifier weights: the {prov["weights"]} (entry
`{prov["entry"]}`) of {source}, with the same tensor names, as safetensors.

Official code: {code}. Paper: {config.get("paper")}.

## How to load

{name} is not part of timm itself: install this project's package (`rmt-zoo`: `pip install -e .` in its
checkout) and `import zoo` first, which registers its models with timm{where_env}:

```python
import zoo

model = zoo.load("{name}", pretrained=True)  # fetches {repo}/model.safetensors through huggingface_hub
```

{timm_line}`zoo.load("{name}", pretrained="/path/to/model.safetensors")` loads a local copy. The file itself is a plain
state dict (`safetensors.torch.load_file`) with the source checkpoint's key names, so it also loads into the code
that wrote the source checkpoint.

## Preprocessing

{_preprocessing(pre)}

## Reported numbers (not measured here)

{_paper_table(config["paper_metrics"], pre["input_size"])}

## Measured numbers

{_measured_table(rows, results_name)}{full_results}

## Provenance

- source: {source}, sha256 `{prov["source_sha256"]}`, entry `{prov["entry"]}` ({prov["weights"]})
- model.safetensors sha256 `{prov["weights_sha256"]}`
- check: loads into `zoo.load("{name}")` with no missing or unexpected keys, and gives the source
  checkpoint's outputs on a fixed random input of shape {prov["check"]["input_shape"]}
  (max abs difference {prov["check"]["max_abs_output_diff"]:.3g})
- converted {prov["converted_at"]} by {prov["converter"]}{commit}
- license: {license_text}
"""
