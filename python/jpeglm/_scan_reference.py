"""Moved to :mod:`jpeglm.reference.scan` (the plain-Python scan automaton); kept so old imports
work."""

from jpeglm.reference.scan import ScanAutomatonReference, State, __all__  # noqa: F401
