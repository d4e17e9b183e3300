"""(being written)"""

PASSES = ()
