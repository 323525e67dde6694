"""What a custom op costs, declared beside the op, so that cost models and FLOP counters count what really runs.

Why: a custom op is opaque to the fake-CUDA tracers (benchmarks' GPU proxy): inductor's scheduler sees one node
reading its inputs and writing its outputs once, and an eager kernel counter sees nothing. The op's own launch plan
knows better (how many kernels it launches, what each reads and writes), so the op declares it here and the proxy
reads it. FLOP counters (fvcore, torch's) skip a custom op altogether, so the op also declares its multiply-adds,
counted as they count the plain ops it replaces (bench/flops.py reads them). Shapes and dtypes are all a
declaration may read: it is called on fake and meta tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["OpCost", "OpMacs", "cost_of", "declare_cost", "declare_macs", "declared_macs", "declared_ops", "macs_of"]


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


@dataclass(frozen=True)
class OpMacs:
    """Multiply-adds of one call, as FLOP counters count the plain ops it stands for: matmuls, convolutions and
    attention (`macs`), and the elements a LayerNorm inside it normalizes (`normalized`: fvcore counts a LayerNorm
    with affine parameters at 5 a element, torch's counter not at all)."""

    macs: int
    normalized: int = 0


CostFn = Callable[..., OpCost]
MacsFn = Callable[..., OpMacs]
_COSTS: dict[str, CostFn] = {}
_MACS: dict[str, MacsFn] = {}


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


def declare_macs(qualname: str, fn: MacsFn) -> None:
    """Declare `fn(*args, **kwargs) -> OpMacs` as the multiply-adds of the op `qualname` ("namespace::name")."""
    _MACS[qualname] = fn


def declared_macs() -> frozenset[str]:
    """The ops that declared their multiply-adds."""
    return frozenset(_MACS)


def macs_of(qualname: str, *args, **kwargs) -> OpMacs | None:
    """The declared multiply-adds of one call of `qualname` with these arguments, or None where it declared none."""
    fn = _MACS.get(qualname)
    return None if fn is None else fn(*args, **kwargs)
