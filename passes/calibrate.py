"""The calibrate pass: observed ranges from data, recorded on the model for range analysis."""

from __future__ import annotations

from typing import Any, Literal, Optional

from qgraph.errors import PassContractError
from qgraph.ir.core import Model
from qgraph.pm.base import AllAnalysesExcept, Pass, PassResult


class Calibrate(Pass):
    """Run the float model on calibration data and record each float tensor's range.

    before => after: the graph is unchanged; ``model.calibration`` holds a RangeMap
    {tensor name: [min, max]} that ``range-analysis`` (and quantization) read.

    Methods: ``minmax``; ``percentile`` (``percentile``, default 99.999); ``entropy`` (KL
    divergence over a histogram, as TensorRT's calibrator; ``num-bins``); ``mse`` (the
    clipping range with the least quantization error at ``bits``). Data: ``data=PATH``
    (a .npz or a folder; ``qgraph opt --calib`` fills it in), or any iterable of
    ``{input name: array}`` batches from Python. Preconditions: every graph input has a
    tensor type with known rank; the model runs in ONNX Runtime.
    """

    name = "calibrate"
    #: Set from Python, not pipeline options: the progress line (None: on a terminal) and
    #: method options passed on as given (``with_options``).
    show_progress: Optional[bool] = None
    given_options: Optional[dict] = None

    def __init__(self, method: Literal["minmax", "percentile", "entropy", "mse"] = "minmax",
                 data: Optional[str] = None, percentile: Optional[float] = None, num_bins: Optional[int] = None,
                 bits: Optional[int] = None, symmetric: Optional[bool] = None, batch_size: int = 1):
        self.method, self.data = method, data
        self.percentile, self.num_bins, self.bits, self.symmetric = percentile, num_bins, bits, symmetric
        self.batch_size = batch_size

    @classmethod
    def with_options(cls, method: str, data: Any, options: Optional[dict] = None, *,
                     show_progress: Optional[bool] = None) -> "Calibrate":
        """The pass as ``qgraph.quantize`` runs it: ``data`` a path or an iterable of batches,
        ``options`` passed to the method as given (an unknown method or option is its error)."""
        p = cls(data=data)
        p.method = method  # type: ignore[assignment]  # checked by qgraph.calib.calibrate
        p.given_options = dict(options or {})
        p.show_progress = show_progress
        return p

    def method_options(self) -> dict[str, Any]:
        if self.given_options is not None:
            return dict(self.given_options)
        relevant = {"minmax": (), "percentile": ("percentile", "num_bins"), "entropy": ("num_bins",),
                    "mse": ("bits", "symmetric", "num_bins")}[self.method]
        return {k: getattr(self, k) for k in relevant if getattr(self, k) is not None}

    def check_preconditions(self, model: Model) -> None:
        if self.data is None:
            raise PassContractError("calibrate needs data: calibrate(data=PATH), `qgraph opt --calib PATH`, "
                                    "or Calibrate(data=...) in Python")

    def run(self, model: Model, analyses) -> PassResult:
        from qgraph.calib.calibrate import calibrate

        model.calibration = calibrate(model, self.data, self.method, batch_size=self.batch_size,
                                      show_progress=self.show_progress, **self.method_options())
        from qgraph.calib.intervals import RangeAnalysis

        return PassResult.changed(AllAnalysesExcept({RangeAnalysis}), tensors=len(model.calibration))


PASSES = (Calibrate,)
