"""The installed distribution's version, as the package metadata records it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("facesr")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
