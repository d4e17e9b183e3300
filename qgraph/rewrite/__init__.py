"""The rewrite engine: patterns, rules (pattern / check / rewrite), rule sets, the driver."""

from qgraph.rewrite.engine import Builder, MatchTracer, RewritePass, RewriteRule, RuleSet, apply_rules, try_rule
from qgraph.rewrite.pattern import (Const, Match, MatchFailure, NodePattern, PatternOps, Var, constant_tensor, match,
                                   pat)

__all__ = ["Builder", "Const", "Match", "MatchFailure", "MatchTracer", "NodePattern", "PatternOps", "RewritePass",
           "RewriteRule", "RuleSet", "Var", "apply_rules", "constant_tensor", "match", "pat",
           "try_rule"]
