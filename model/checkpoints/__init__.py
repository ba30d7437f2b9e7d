"""The checkpoint bundled with the package: the model `facesr serve` runs when none is configured.

Importing this module imports no torch, so processes that never run a model can name the file.
"""

from pathlib import Path

#: The bundled default checkpoint (safetensors; its metadata is the model card).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "default.safetensors"
