"""The runner (bench/runner.py): a dead worker's reason is its error, not a trailing log line."""

from __future__ import annotations


from bench.runner import crash_reason


def test_crash_reason_is_the_error_not_a_trailing_log_line():
    log = """loading
Traceback (most recent call last):
  File "x.py", line 3, in <module>
    boom()
RuntimeError: CUDA error: an illegal memory access was encountered
/usr/lib/python3/site-packages/torch/cuda/__init__.py:99: UserWarning: something at exit
  warnings.warn(
"""
    assert crash_reason(log) == "RuntimeError: CUDA error: an illegal memory access was encountered"
    chained = log.replace(
        "RuntimeError",
        "During handling of the above exception, another exception occurred:\n\n"
        'Traceback (most recent call last):\n  File "y"\nValueError: second\nX',
    )
    assert crash_reason(chained) == "ValueError: second"
    assert crash_reason("Segmentation fault\n  warnings.warn(\n") == ""
    assert crash_reason("") == ""
