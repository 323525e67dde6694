"""Model cards (hub/card.py): front matter, measured numbers read by the harness's reader (finite ones only),
and the results dataset linked."""

from __future__ import annotations

import json

from huggingface_hub import ModelCard, constants

import zoo
from hub.__main__ import main
from hub.card import read_results, render_card


def test_card_front_matter_paper_and_measured_numbers(rmt_converted, hub_org):
    card = ModelCard.load(rmt_converted / "README.md")
    assert card.data.library_name == "timm" and card.data.datasets == ["imagenet-1k"]
    assert {"image-classification", "rmt"} <= set(card.data.tags)
    text = card.text
    assert 'zoo.load("rmt_t", pretrained=True)' in text and f"RMT_HUB_ORG={hub_org}" in text
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


def test_card_links_the_results_dataset_and_convert_checks_its_id(bare_converted, tmp_path, capsys):
    card = (bare_converted[0] / "README.md").read_text()
    assert f"Full benchmark results: {constants.ENDPOINT}/datasets/bench-org/rmt-results" in card
    argv = ["convert", "--model", "rmt_t", "nope.pth", str(tmp_path / "out"), "--results-dataset", "bench org/x"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == "error: 'bench org/x' is not a valid Hub repo id (ORG/NAME: letters, digits, -, _ and .).\n"
    assert list(tmp_path.iterdir()) == []
