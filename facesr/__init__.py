"""facesr: face super-resolution (DIC / DICGAN) as a library, a CLI and a batching REST service."""

__version__ = "0.1.0"
