"""What a custom op costs on the GPU, declared beside the op, so that cost models count what really runs.

Why: a custom op is opaque to the fake-CUDA tracers (benchmarks' GPU proxy): inductor's scheduler sees one node
reading its inputs and writing its outputs once, and an eager kernel counter sees nothing. The op's own launch plan
knows better (how many kernels it launches, what each reads and writes), so the op declares it here and the proxy
reads it. Shapes and dtypes are all a declaration may read: it is called on fake tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["OpCost", "cost_of", "declare_cost", "declared_ops"]


@dataclass(frozen=True)
class OpCost:
    """Kernels launched by one call of an op, and the bytes they move to and from device memory."""

    launches: int
    bytes_read: int
    bytes_written: int

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    def __add__(self, other: OpCost) -> OpCost:
        return OpCost(
            self.launches + other.launches,
            self.bytes_read + other.bytes_read,
            self.bytes_written + other.bytes_written,
        )


CostFn = Callable[..., OpCost]
_COSTS: dict[str, CostFn] = {}


def declare_cost(qualname: str, fn: CostFn) -> None:
    """Declare `fn(*args, **kwargs) -> OpCost` as the cost of the op `qualname` ("namespace::name")."""
    _COSTS[qualname] = fn


def declared_ops() -> frozenset[str]:
    """The ops that declared a cost."""
    return frozenset(_COSTS)


def cost_of(qualname: str, *args, **kwargs) -> OpCost | None:
    """The declared cost of one call of `qualname` with these arguments, or None where the op declared none."""
    fn = _COSTS.get(qualname)
    return None if fn is None else fn(*args, **kwargs)
