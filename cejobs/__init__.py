"""cejobs: counterfactual-example datasets from a class-conditional diffusion model."""

__version__ = "0.1.0"
