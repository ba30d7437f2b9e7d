"""An external 68-point landmark detector (PFLD, ONNX), used as an independent judge of SR faces.

The network is third-party and not trained with this project: it scores how recognisable the facial
geometry of a super-resolved face is, the way the DIC paper scores SR faces with a separately trained
landmark network. It runs on the CPU with onnxruntime.

Model contract (the PFLD-68 export): input `1 x 3 x 112 x 112` float32 RGB in [0, 1] (no mean
subtraction), output 136 values = 68 (x, y) pairs normalised to the input crop, i.e. in [0, 1] for
points inside it. The face crop fed to it is the whole 128 x 128 image, resized to 112 with PIL bicubic;
the normalised output is scaled back to the image's own pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from facesr.model.config import NUM_KEYPOINTS

#: Where the project's tests and docs expect the detector, relative to the repository root.
DEFAULT_LANDMARK_MODEL = Path("..") / "shared" / "models" / "pfld68.onnx"
DETECTOR_INPUT_SIZE = 112


class LandmarkDetectorError(RuntimeError):
    """The landmark model file is missing, unreadable, or not the expected PFLD-68 export."""


class OnnxLandmarkDetector:
    """PFLD-68 on onnxruntime's CPU provider.

    Args:
        model_path: the `.onnx` file.
        num_threads: intra-op threads for onnxruntime (0 lets it decide).
    """

    def __init__(self, model_path: str | Path, *, num_threads: int = 0) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise LandmarkDetectorError(
                f"landmark model not found: {self.model_path} (expected the PFLD-68 ONNX file, "
                "input 1x3x112x112 RGB in [0, 1], output 136 values)"
            )
        try:
            import onnxruntime
        except ImportError as error:  # an optional dependency of the training extras
            raise LandmarkDetectorError(
                "onnxruntime is not installed; install the training extras (`pip install facesr[train]`)"
            ) from error
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.log_severity_level = 3
        try:
            self._session = onnxruntime.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own untyped exceptions for bad files
            raise LandmarkDetectorError(f"cannot load landmark model {self.model_path}: {error}") from error
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise LandmarkDetectorError(f"{self.model_path}: expected one input, got {len(inputs)}")
        self._input_name = inputs[0].name
        expected_tail = [3, DETECTOR_INPUT_SIZE, DETECTOR_INPUT_SIZE]
        if list(inputs[0].shape[1:]) != expected_tail:
            raise LandmarkDetectorError(
                f"{self.model_path}: input shape {inputs[0].shape} is not N x 3 x 112 x 112 (not PFLD-68?)"
            )

    def detect(self, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
        """Landmarks of face crops.

        Args:
            images: N x H x W x 3 uint8 RGB face crops (the whole image is the face box).
            batch_size: images per onnxruntime call.

        Returns:
            N x 68 x 2 float32 (x, y) in each image's own pixel coordinates.
        """
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected N x H x W x 3 uint8 images, got {images.shape} {images.dtype}")
        height, width = images.shape[1:3]
        results = []
        for start in range(0, len(images), batch_size):
            batch = np.stack([self._to_input(image) for image in images[start : start + batch_size]])
            raw = self._session.run(None, {self._input_name: batch})[0]
            expected = (len(batch), 2 * NUM_KEYPOINTS)
            if raw.shape != expected:
                raise LandmarkDetectorError(f"{self.model_path}: output {raw.shape}, expected {expected}")
            results.append(raw.reshape(len(batch), NUM_KEYPOINTS, 2))
        if not results:
            return np.zeros((0, NUM_KEYPOINTS, 2), dtype=np.float32)
        normalised = np.concatenate(results).astype(np.float32)
        return normalised * np.asarray([width, height], dtype=np.float32)

    @staticmethod
    def _to_input(image: np.ndarray) -> np.ndarray:
        """H x W x 3 uint8 -> 3 x 112 x 112 float32 in [0, 1] (PIL bicubic resize)."""
        size = (DETECTOR_INPUT_SIZE, DETECTOR_INPUT_SIZE)
        resized = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        return (resized / 255.0).transpose(2, 0, 1)
