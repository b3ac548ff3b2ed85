"""chord-fl: device-cloud personalised mixed-precision recommendation (CHORD), as a library.

This package has no Flower imports; `strategies/` and `simulations/` adapt it to Flower.
"""

__version__ = "0.1.0"
