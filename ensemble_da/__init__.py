"""ensemble_da: posterior ensembles from score-based diffusion priors on the HEALPix sphere.

The science core: importable and testable without Ray (DESIGN.md §2).
"""

__version__ = "0.1.0"
