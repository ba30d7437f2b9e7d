"""The one typed configuration that sizes the DIC generator, and the sizes every other module reads.

Field names follow the paper; `from_official_options` maps the authors' option names.

The input size, the scale and the landmark count are defined here once. Code that has a `DICConfig`
at hand reads `config.lr_size`, `config.hr_size` and `config.num_keypoints`; code that has none (image
preprocessing, data set readers, landmark utilities) takes a size argument whose default is one of the
module-level constants below.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Final, Literal

#: Side of the low-resolution face the network takes, in pixels (the authors' 16 x 16).
LR_SIZE: Final = 16
#: Upscaling factor; DIC defines x8 only.
SCALE: Final = 8
#: Side of the super-resolved face in pixels (LR_SIZE x SCALE = 128).
HR_SIZE: Final = LR_SIZE * SCALE
#: Landmarks per face: the iBUG 68-point layout, on which the 5 attention components are defined.
NUM_KEYPOINTS: Final = 68
#: Output pixels per landmark-heatmap cell (the hourglass works at HR / 4).
HEATMAP_STRIDE: Final = 4

LandmarkMode = Literal["attention", "concat", "none"]
LANDMARK_MODES: tuple[str, ...] = ("attention", "concat", "none")


@dataclass(frozen=True, kw_only=True)
class DICConfig:
    """Sizes of the DIC generator (x8 only, as in the authors' code).

    Attributes:
        num_features: N, channels of the SR branch features (paper 48).
        num_groups: G, projection groups in each feedback block (paper 6).
        num_steps: T, SR/alignment iterations; step 0 is the coarse block (paper 4).
        hg_num_features: channels of the hourglass alignment branch (paper 256).
        num_keypoints: landmarks predicted by the alignment branch (68, iBUG layout).
        num_fusion_blocks: grouped residual blocks in the attentive fusion module (paper 7).
        landmark_mode: "attention" is DIC; "concat" is the DIC-CL ablation (the 5 component maps are
            concatenated to the features instead of attending); "none" is DIC-NL (no alignment branch).
        in_channels: image channels (3, RGB).
        scale: upscaling factor; only 8 exists in the architecture.
    """

    num_features: int = 48
    num_groups: int = 6
    num_steps: int = 4
    hg_num_features: int = 256
    num_keypoints: int = NUM_KEYPOINTS
    num_fusion_blocks: int = 7
    landmark_mode: LandmarkMode = "attention"
    in_channels: int = 3
    scale: int = SCALE

    def __post_init__(self) -> None:
        positive = ("num_features", "num_groups", "num_steps", "num_fusion_blocks", "in_channels")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DICConfig.{name} must be a positive integer, got {value!r}")
        if self.scale != SCALE:
            raise ValueError(
                f"DICConfig.scale must be {SCALE} (the only factor DIC defines), got {self.scale!r}"
            )
        if self.landmark_mode not in LANDMARK_MODES:
            raise ValueError(
                f"DICConfig.landmark_mode must be one of {LANDMARK_MODES}, got {self.landmark_mode!r}"
            )
        if self.num_keypoints != NUM_KEYPOINTS:
            raise ValueError(
                f"DICConfig.num_keypoints must be {NUM_KEYPOINTS}: the 5-component grouping is defined "
                f"on iBUG-{NUM_KEYPOINTS}, got {self.num_keypoints!r}"
            )
        if self.hg_num_features < 4 or self.hg_num_features % 4:
            raise ValueError(
                f"DICConfig.hg_num_features must be a multiple of 4, got {self.hg_num_features!r}"
            )

    # -- derived sizes -------------------------------------------------------------------------------
    @property
    def lr_size(self) -> int:
        """Side of the low-resolution input (`LR_SIZE`, 16)."""
        return LR_SIZE

    @property
    def hr_size(self) -> int:
        """Side of the super-resolved output (128)."""
        return self.lr_size * self.scale

    @property
    def heatmap_size(self) -> int:
        """Side of the landmark heatmaps (HR / `HEATMAP_STRIDE` = 32)."""
        return self.hr_size // HEATMAP_STRIDE

    @property
    def has_landmarks(self) -> bool:
        """Whether the alignment branch exists (everything but DIC-NL)."""
        return self.landmark_mode != "none"

    # -- presets -------------------------------------------------------------------------------------
    @classmethod
    def paper(cls, **overrides: Any) -> DICConfig:
        """The CVPR 2020 configuration (21,803,849 generator parameters)."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> DICConfig:
        """A few-hundred-k-parameter width for fast CPU tests (the parity fixtures' sizes)."""
        base = dict(num_features=8, num_groups=2, hg_num_features=32, num_fusion_blocks=2)
        return cls(**{**base, **overrides})

    @classmethod
    def reduced(cls, **overrides: Any) -> DICConfig:
        """A width that trains on a 2-core CPU in about an hour while keeping every part of the network.

        The 256 x 256 projections dominate the cost (it grows with num_features^2 x num_groups), so
        the SR branch stays at the tiny width and the alignment branch is doubled.
        """
        base = dict(num_features=8, num_groups=2, hg_num_features=64, num_fusion_blocks=2)
        return cls(**{**base, **overrides})

    @classmethod
    def preset(cls, name: str) -> DICConfig:
        """``paper``, ``reduced`` or ``tiny`` by name.

        Raises:
            ValueError: another name.
        """
        presets = {"paper": cls.paper, "reduced": cls.reduced, "tiny": cls.tiny}
        if name not in presets:
            raise ValueError(f"the preset must be one of {sorted(presets)}, got {name!r}")
        return presets[name]()

    # -- (de)serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DICConfig:
        """Build from `to_dict` output; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DICConfig keys: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_official_options(cls, options: dict[str, Any]) -> DICConfig:
        """Map the authors' `networks` option block (num_features, hg_num_feature, ...) to a config."""
        return cls(
            num_features=int(options["num_features"]),
            num_groups=int(options["num_groups"]),
            num_steps=int(options["num_steps"]),
            hg_num_features=int(options["hg_num_feature"]),
            num_keypoints=int(options["hg_num_keypoints"]),
            num_fusion_blocks=int(options["num_fusion_block"]),
            in_channels=int(options.get("in_channels", 3)),
            scale=int(options.get("scale", SCALE)),
        )
