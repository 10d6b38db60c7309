"""Defaults of the noise models that the CLI shows in its options: plain numbers, no imports, so that loading a
command (``cimcal fit --help``) does not load torch, pandas and scipy."""

# Knots per conductance table. A jump in the data (the gap between stuck cells and the bulk) falls inside one knot
# interval, whose probability (1 / (K - 1)) the linear interpolation spreads over the gap. Stuck cells are rare
# (~0.1-1 %) and dominate the error energy: at K = 256 (0.39 % per interval) a simulated rram chip's lowest level,
# the idle device of every weight pair, came out with half the mean squared error of its fit data (3.3 vs
# 6.6 µS²); at 4096 (0.024 %), 6.8 (docs/profile-format.md).
DEFAULT_KNOTS = 4096

# The thresholds ValidationResult.passed applies unless told otherwise (`cimcal validate`'s)
DEFAULT_MAX_KS = 0.1
DEFAULT_MAX_TV = 0.1
