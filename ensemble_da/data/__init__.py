"""Training data for learned priors: a SPEEDY climate regridded to HEALPix (see `speedy`)."""

from ensemble_da.data.speedy import DEFAULT_CHANNELS, SpeedyDataset, generate_speedy, read_speedy

__all__ = ["DEFAULT_CHANNELS", "SpeedyDataset", "generate_speedy", "read_speedy"]
