"""Synthetic but realistic workflow bundles for scale tests (imports only :mod:`jellybean.spec`)."""

from jellybean.generate.city import generate_city, write_city

__all__ = ["generate_city", "write_city"]
