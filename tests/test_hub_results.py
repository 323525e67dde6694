"""Benchmark results as a dataset repo (hub/results.py): rows, CSV, table, plot and card uploaded, dry runs and
errors in one sentence."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from huggingface_hub import HfApi, constants

from hub.publish import PublishError


def test_push_results_uploads_rows_table_plot_and_card_as_a_dataset_repo(fake_hub, tmp_path, capsys, bench_rows):
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


def test_push_results_dry_run_lists_files_and_uploads_nothing(fake_hub, bench_rows):
    from hub.results import push_results

    printed = push_results(bench_rows(), "me/bench", sources=["r.jsonl"], dry_run=True, private=False, token=None)
    lines = printed.splitlines()
    assert lines[0].startswith("Would upload 5 files (") and " from 3 rows of r.jsonl to " in lines[0]
    assert f"{constants.ENDPOINT}/datasets/me/bench (public dataset repo, created if missing):" in lines[0]
    assert sorted(line.split()[-1] for line in lines[1:-2]) == sorted(
        ["README.md", "plot.png", "results.csv", "results.jsonl", "table.md"]
    )
    assert all(line.split()[1] in ("B", "KB") for line in lines[1:-2]) and lines[-1] == "Dry run: nothing was uploaded."
    assert lines[-2] == "Host names and local paths in every file: redacted (--include-host keeps them)."
    assert fake_hub == {"repos": [], "commits": []}


def test_push_results_errors_are_one_sentence(fake_hub, offline_cache, monkeypatch, bench_rows, one_sentence):
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


def test_push_results_dry_run_says_what_would_be_uploaded_not_every_row(tmp_path, fake_hub, capsys, make_row):
    """Repo, row count, files and sizes: a summary whose length does not grow with the rows."""
    from bench.results import append_row
    from hub.__main__ import main

    few, many = tmp_path / "few.jsonl", tmp_path / "many.jsonl"
    for results, count in ((few, 2), (many, 40)):
        for batch in range(1, count + 1):
            append_row(results, make_row(batch_size=batch, command="python bench.py --models swin_t"))
    printed = {}
    for results in (few, many):
        assert main(["push-results", str(results), "--repo", "me/bench", "--dry-run"]) == 0
        printed[results.name] = capsys.readouterr().out
    out = printed["few.jsonl"]
    first = out.splitlines()[0]
    assert first.startswith("Would upload 5 files (") and " from 2 rows of few.jsonl to " in first, first
    assert f"{constants.ENDPOINT}/datasets/me/bench (private dataset repo" in first
    for name in ("README.md", "plot.png", "results.csv", "results.jsonl", "table.md"):
        assert re.search(rf"\d+(\.\d)? (B|KB)  {re.escape(name)}$", out, re.MULTILINE), name  # each file, its size
    assert " from 40 rows of many.jsonl to " in printed["many.jsonl"]
    assert len(printed["many.jsonl"].splitlines()) == len(out.splitlines()) == 8  # no line per row
    assert '"model"' not in out and "python bench.py" not in out and fake_hub["commits"] == []


def test_push_results_command_reads_what_report_shows(tmp_path, capsys):
    from bench.results import append_row
    from hub.__main__ import main

    path = tmp_path / "r.jsonl"
    row = {"model": "rmt_t", "backend": "eager", "precision": "fp32", "batch_size": 1, "input_size": [224, 224],
           "device": "cpu", "status": "ok", "throughput_ips": 12.5, "env": {"device_name": "Test CPU"}}  # fmt: skip
    append_row(path, {**row, "throughput_ips": 1.0})
    append_row(path, row)  # the newer number of the same measurement
    assert main(["push-results", str(path), "--repo", "my-org/rmt-results", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "datasets/my-org/rmt-results" in out and "1 rows of r.jsonl" in out
    assert out.rstrip().endswith("Dry run: nothing was uploaded.")
    assert main(["push-results", str(path), "--repo", "not a repo"]) == 1
    assert "is not a valid Hub repo id" in capsys.readouterr().err
    assert main(["push-results", str(tmp_path / "none.jsonl"), "--repo", "my-org/x", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("error: Results file")
