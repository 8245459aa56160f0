"""dlsa-cli: DLSA (Xu et al., ECCV 2022) for long-tailed recognition on feature files."""

__all__ = ["__version__"]

__version__ = "0.1.0"
