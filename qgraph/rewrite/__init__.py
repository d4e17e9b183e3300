"""The rewrite engine: patterns, rules (pattern / check / rewrite), rule sets, the driver."""

from qgraph.rewrite.engine import Builder, MatchTracer, RewritePass, RewriteRule, RuleSet, apply_rules
from qgraph.rewrite.pattern import Const, Match, MatchFailure, NodePattern, Var, constant_tensor, match

__all__ = ["Builder", "Const", "Match", "MatchFailure", "MatchTracer", "NodePattern", "RewritePass",
           "RewriteRule", "RuleSet", "Var", "apply_rules", "constant_tensor", "match"]
