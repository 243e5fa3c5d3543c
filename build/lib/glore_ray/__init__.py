"""glore-ray: GLoRe (global and local refinements with ORM/SORM) as a distributed Ray
application."""

__version__ = "0.1.0"
