"""ensemble_da: posterior ensembles from score-based diffusion priors on the HEALPix sphere.

The science core: importable and testable without Ray (DESIGN.md §2). The one-call Python
entry point is `ensemble_da.sample_posterior` (see `ensemble_da.posterior`).
"""

__version__ = "0.1.0"

__all__ = ["sample_posterior"]


def __getattr__(name: str):
    # Lazy, so `import ensemble_da` (and the CLI's --help) does not import torch.
    if name == "sample_posterior":
        from ensemble_da.posterior import sample_posterior

        return sample_posterior
    raise AttributeError(f"module 'ensemble_da' has no attribute {name!r}")
