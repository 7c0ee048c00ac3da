"""Analytic toy domain (``toy``): a 2-D Gaussian mixture or masked zero-CoM 3-D point sets,
both with an exact denoiser. See :mod:`domains.toy.domain`."""
from .domain import ExactTeacher, ToyDomain, make_gmm, make_pointset

__all__ = ["ToyDomain", "ExactTeacher", "make_gmm", "make_pointset"]
