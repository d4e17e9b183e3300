"""What a compiled model takes and returns (``TensorSpec``) and the error of running it
(``RunError``): shared by the CPU build (``build.py``) and the device builds of the kernel
packages (``gpu/build.py``), which must not import ``build.py`` (it reaches them through
``kernel_packages``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from qgraph.errors import QGraphError


class RunError(QGraphError):
    """Feeds do not match a compiled model's inputs, or the target cannot run here."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype name and static shape of a compiled model's input or output."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "TensorSpec":
        return cls(str(d["name"]), str(d["dtype"]), tuple(int(x) for x in d["shape"]))
