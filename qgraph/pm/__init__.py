"""The pass manager: passes, analyses, pipelines, instruments."""

from qgraph.pm.analysis import Analysis, AnalysisManager
from qgraph.pm.analyses import Dataflow, DataflowAnalysis
from qgraph.pm.base import ALL_ANALYSES, AllAnalysesExcept, Pass, PassResult
from qgraph.pm.instruments import DumpIR, Instrument, PassTimings
from qgraph.pm.pipeline import FixedPoint, PassContext, PassManager, Pipeline, PipelineResult
from qgraph.pm.registry import PassRegistry

__all__ = [
    "ALL_ANALYSES", "AllAnalysesExcept", "Analysis", "AnalysisManager", "Dataflow", "DataflowAnalysis", "DumpIR", "FixedPoint",
    "Instrument", "Pass", "PassContext", "PassManager", "PassRegistry", "PassResult", "PassTimings",
    "Pipeline", "PipelineResult",
]
