"""Would compiling with a dynamic batch let one compile serve batch 1 and batch 256? Counts the graphs dynamo
compiles for batches 256, 1 and 64, static and dynamic.

    python -m benchmarks.dynamic_batch

The suite compiles a static graph per batch; this shows whether one dynamic graph could replace them (what it found
is in results/README.md).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch._dynamo.utils import counters


def graphs(dynamic: bool, batches: tuple[int, ...] = (256, 1, 64)) -> int:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, dynamic=dynamic)
    with torch.no_grad():
        for batch in batches:
            compiled(torch.randn(batch, 3, 16, 16))
    return counters["stats"]["unique_graphs"]


if __name__ == "__main__":
    print(
        f"torch {torch.__version__}: graphs compiled for batches 256, 1, 64: "
        f"static {graphs(False)}, dynamic {graphs(True)}"
    )
