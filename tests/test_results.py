"""The JSON-lines results file (bench/results.py): whole rows or nothing, torn and foreign lines skipped with
one note."""

from __future__ import annotations

import json


from bench import cli
from common.cli import EXIT_USAGE
from bench.results import SCHEMA_VERSION, append_row, latest_rows, load_results


def test_results_file_round_trip_survives_a_torn_line(tmp_path, capsys, make_row):
    path = tmp_path / "r.jsonl"
    append_row(path, make_row(throughput_ips=1.0))
    append_row(path, make_row(throughput_ips=2.0))
    with open(path, "a") as f:
        f.write('{"model": "cut sho')  # a crash mid-write: no newline at the end
    append_row(path, make_row(batch_size=1))  # the next row starts on its own line, so it is not glued to the torn one
    rows = load_results(path)
    assert [r["throughput_ips"] for r in rows] == [1.0, 2.0, 800.0]
    assert all(r["schema_version"] == SCHEMA_VERSION for r in rows)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipped 1 line(s)" in err and "(line 3)" in err
    latest = latest_rows(rows)
    assert [(r["batch_size"], r["throughput_ips"]) for r in latest] == [(8, 2.0), (1, 800.0)]


def test_a_row_appended_to_a_file_missing_its_last_newline_is_kept(tmp_path, make_row):
    path = tmp_path / "r.jsonl"
    append_row(path, make_row(throughput_ips=1.0))
    path.write_bytes(path.read_bytes()[:-1])  # `truncate -s -1`: the last row is whole but has no newline
    append_row(path, make_row(throughput_ips=2.0))
    assert [r["throughput_ips"] for r in load_results(path)] == [1.0, 2.0]


def test_foreign_partial_and_binary_lines_are_skipped_with_one_note(tmp_path, capsys, make_row):
    path = tmp_path / "r.jsonl"
    append_row(path, make_row(throughput_ips=1.0))
    foreign = [
        "[1]",
        '{"name": "x"}',
        '"text"',
        "null",
        json.dumps(make_row(batch_size="8")),
        json.dumps(make_row(input_size=[224])),
        json.dumps(make_row(input_size="224x224")),
        json.dumps(make_row(model=None)),
    ]
    with open(path, "ab") as f:
        f.write(("\n".join(foreign) + "\n").encode() + bytes(range(256)) + b"\n")
    append_row(path, make_row(throughput_ips=2.0))
    rows = load_results(path)
    assert [r["throughput_ips"] for r in rows] == [1.0, 2.0]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipped 10 line(s)" in err[0]  # 8 foreign lines, the binary run holds one newline byte
    assert cli.main(["report", str(path), "--format", "csv"]) == 0
    header, newest = capsys.readouterr().out.splitlines()  # the newest row of the one measurement
    assert dict(zip(header.split(","), newest.split(",")))["throughput_ips"] == "2.0"
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(bytes(range(256)) * 4)
    assert load_results(binary) == []
    assert cli.main(["report", str(binary)]) == EXIT_USAGE
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: Results file")


def test_load_results_is_importable_from_the_package(tmp_path, make_row):
    import bench

    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(make_row()) + "\n")
    assert bench.load_results(path)[0]["latency_ms"]["p50"] == 9.0
