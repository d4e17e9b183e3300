"""Mixed precision: each layer's format chosen from measured sensitivity (``--precision auto``).

    from qgraph.precision import choose_precision
    r = choose_precision(float_model, config, feeds, accuracy="sqnr>=30")
    r.config      # a QuantConfig: one node override per layer, float layers excluded

See ``search`` for the method, ``sensitivity`` for the probes, ``executor`` for where they run.
"""

from qgraph.precision.formats import FLOAT, FORMATS, W4A8, W8A8, W8A16, Format, parse_formats
from qgraph.precision.search import (Floor, PrecisionError, PrecisionResult, assignment_config, choose_precision,
                                     parse_accuracy, parse_budget)

__all__ = ["FLOAT", "FORMATS", "Floor", "Format", "PrecisionError", "PrecisionResult", "W4A8", "W8A16", "W8A8",
           "assignment_config", "choose_precision", "parse_accuracy", "parse_budget", "parse_formats"]
