"""Calibration and ranges: data feeding, statistics collectors, range methods, range maps."""

from qgraph.calib.ranges import ChannelIntervals, Interval, RangeMap

__all__ = ["ChannelIntervals", "Interval", "RangeMap"]
