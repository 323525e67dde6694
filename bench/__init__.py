"""Benchmark harness for the zoo: backends, measurements and reports as separate small pieces.

    python bench.py --models rmt_s swin_t --backend eager compile tensorrt
    python bench.py report bench_results/results.jsonl --plot plot.png

Other tools read results with `load_results(path)`: a list of row dicts, one per measurement (bench/spec.py).
"""

from .results import latest_rows, load_results

__all__ = ["load_results", "latest_rows"]
