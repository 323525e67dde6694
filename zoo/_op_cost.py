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


class _Declarations:
    """One kind of declaration (a cost, multiply-adds) by op name ("namespace::name"): `fn(*args, **kwargs)` gives
    one call's figure, from the call's arguments."""

    def __init__(self):
        self._fns: dict[str, Callable] = {}

    def declare(self, qualname: str, fn: Callable) -> None:
        self._fns[qualname] = fn

    def names(self) -> frozenset[str]:
        """The ops that declared one."""
        return frozenset(self._fns)

    def of(self, qualname: str, *args, **kwargs):
        """The declared figure of one call of `qualname` with these arguments, or None where the op declared none."""
        fn = self._fns.get(qualname)
        return None if fn is None else fn(*args, **kwargs)


_COSTS, _MACS = _Declarations(), _Declarations()
# fn(*args, **kwargs) -> OpCost
declare_cost, declared_ops, cost_of = _COSTS.declare, _COSTS.names, _COSTS.of
# fn(*args, **kwargs) -> OpMacs
declare_macs, declared_macs, macs_of = _MACS.declare, _MACS.names, _MACS.of
