"""cejobs: counterfactual-example datasets from a class-conditional diffusion model."""

from cejobs.threads import passive_openmp_default

passive_openmp_default()  # before any cejobs module loads torch (cejobs/threads.py)

__version__ = "0.1.0"
