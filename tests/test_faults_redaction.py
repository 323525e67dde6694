"""Redaction that holds: rows written by every kind of run (bench.py, a launcher's job, the suite, accuracy,
a failed worker) publish no path the run knows to be private, wherever it appears: after "cache:", with spaces
inside, in a command, a reason or a note."""

from __future__ import annotations

import json
import tempfile

import pytest
from huggingface_hub import constants

from common.provenance import REPO_ROOT
from hub.results import published_rows

HOME = "/home/alice"
SECRETS = ("/home/alice", "alice", "data/imagenet", "imagenet val", "t.pth", "space/h100", "x 1.png", "x_y.png")


@pytest.fixture
def private_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", HOME)
    monkeypatch.setattr(tempfile, "tempdir", "/var/tmp/alice tmp")
    monkeypatch.setattr(constants, "HF_HOME", f"{HOME}/.cache/huggingface")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", f"{HOME}/.cache/huggingface/hub")
    monkeypatch.chdir(tmp_path)


def _rows(make_row) -> dict[str, dict]:
    data, weights = f"{HOME}/my data/imagenet val", f"{HOME}/ckpt dir/rmt t.pth"
    return {
        "bench.py": make_row(
            command=f"python bench.py --data '{data}' --checkpoint '{weights}' --out {REPO_ROOT}/results/r.jsonl",
            data=data, weights=weights, accuracy_note=f"1 unreadable image(s) skipped, e.g. {data}/n01/x 1.png."),
        "worker error": make_row(status="error", reason=(
            f"WeightsUnavailableError: rmt_t is not in the cache (cache:{HOME}/.cache/huggingface/hub) and "
            f"HF_HUB_OFFLINE=1")),
        "launcher job": make_row(status="error", reason=(
            f"The job running this row died before it finished: killed (job state FAILED); its log is in "
            f"{HOME}/runs/r.submitit/abc")),
        "suite": make_row(command=f"python -m bench.suite --out '{HOME}/scratch space/h100' --resume"),
        "temp and cwd": make_row(status="error", reason=(
            "OSError: cannot read /var/tmp/alice tmp/x_y.png while in " + str(tempfile.gettempdir()))),
        "urls stay": make_row(reason="see https://huggingface.co/org/repo/blob/main/x and file:/etc/hosts"),
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["bench.py", "worker error", "launcher job", "suite", "temp and cwd"])
def test_no_known_private_path_is_published_from_any_kind_of_run(kind, private_machine, make_row):
    rows = _rows(make_row)
    [shown] = published_rows([rows[kind]])
    text = json.dumps(shown)
    for secret in SECRETS:
        assert secret not in text, (secret, text)
    assert "<path>" in text


def test_paths_inside_the_repository_stay_relative_and_urls_stay(private_machine, make_row):
    rows = _rows(make_row)
    [bench_row, url_row] = published_rows([rows["bench.py"], rows["urls stay"]])
    assert "--out results/r.jsonl" in bench_row["command"] and str(REPO_ROOT) not in bench_row["command"]
    assert "https://huggingface.co/org/repo/blob/main/x" in url_row["reason"] and "/etc/hosts" not in url_row["reason"]


def test_a_known_path_hides_no_longer_name_that_starts_like_it(private_machine, make_row):
    [shown] = published_rows([make_row(reason=f"{HOME}x is another user's; {HOME} is yours", weights="hub")])
    assert shown["reason"] == "<path> is another user's; <path> is yours"
