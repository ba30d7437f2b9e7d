"""The typed training configuration, read from YAML (unknown keys are refused at every level).

Relative paths in a config are resolved against the current working directory (run `facesr train`
from the repository root, so `../shared/...` points at the folder beside the checkout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from facesr.model.config import DICConfig, LandmarkMode


class ConfigError(ValueError):
    """A training configuration file is missing, unreadable or invalid."""


class _Strict(BaseModel):
    """Base of every config section: unknown keys are an error and loaded configs are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Strict):
    """Generator width: a `DICConfig` preset plus optional field overrides."""

    preset: Literal["paper", "reduced", "tiny"] = "paper"
    num_features: int | None = None
    num_groups: int | None = None
    num_steps: int | None = None
    hg_num_features: int | None = None
    num_fusion_blocks: int | None = None
    landmark_mode: LandmarkMode | None = None

    def build(self) -> DICConfig:
        """The `DICConfig` this section describes (its own checks run here)."""
        overrides = self.model_dump(exclude={"preset"}, exclude_none=True)
        try:
            return getattr(DICConfig, self.preset)(**overrides)
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from exc


class AugmentSection(_Strict):
    """The paper's Helen augmentation; every part can be switched off (CelebA uses none)."""

    hflip: bool = True
    rot90: bool = True
    distort: tuple[float, float] | None = (0.66, 1.33)

    @field_validator("distort")
    @classmethod
    def _check_distort(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0.0 < value[0] <= value[1]:
            raise ValueError(f"distort must be (low, high) with 0 < low <= high, got {value}")
        return value


#: Terms of the default training data (300-W), copied into the model card of every exported checkpoint.
LICENCE_300W = (
    "Research and non-commercial use only. Trained on faces from the 300-W collection (AFW, Helen, LFPW, "
    "iBUG images) with iBUG 68-point annotations, which are licensed for non-commercial research only; "
    "image copyright stays with the owners. The weights inherit these terms."
)


class DataSection(_Strict):
    """Where the training faces are, how they are split and loaded, and under which terms they are used.

    `licence` is the usage terms of the data; exported model cards carry it, so a config that trains on
    other data must state that data's terms.
    """

    root: Path = Path("../shared/data/faces-300w-128")
    val_count: int = Field(default=64, ge=1)
    val_seed: int = 12345
    augment: AugmentSection = AugmentSection()
    num_workers: int = Field(default=2, ge=0)
    licence: str = Field(default=LICENCE_300W, min_length=1)


class OptimSection(_Strict):
    """Adam with a step-halving schedule, as the authors."""

    lr: float = Field(default=1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(default=0.0, ge=0)
    milestones: list[int] = [10_000, 20_000, 40_000, 80_000]
    gamma: float = Field(default=0.5, gt=0, le=1)
    grad_clip_norm: float | None = Field(default=None, gt=0)

    @field_validator("milestones")
    @classmethod
    def _check_milestones(cls, value: list[int]) -> list[int]:
        if any(m <= 0 for m in value) or value != sorted(set(value)):
            raise ValueError(f"milestones must be strictly increasing positive steps, got {value}")
        return value


HeatmapLossKind = Literal["mse", "foreground_mse", "adaptive_wing"]


class LossSection(_Strict):
    """Loss weights and the heatmap loss. Pixel and heatmap terms are summed over the steps.

    `heatmap_kind`: `mse` is the authors' plain MSE; `foreground_mse` multiplies the squared error by
    `foreground_weight` where the target exceeds `foreground_threshold` (so the empty map is no longer
    a cheap solution); `adaptive_wing` is the Adaptive Wing loss (Wang et al., ICCV 2019) with the same
    foreground weighting.
    """

    pixel: float = Field(default=1.0, ge=0)
    heatmap: float = Field(default=0.1, ge=0)
    heatmap_kind: HeatmapLossKind = "mse"
    foreground_weight: float = Field(default=10.0, ge=1)
    foreground_threshold: float = Field(default=0.1, gt=0, lt=1)


class AlignmentSection(_Strict):
    """The `align` stage: the recurrent hourglass trained alone, as the authors pre-train it.

    Each face is unrolled over `unroll_steps` recurrent steps (default: the model's step count), the
    hidden state carried from step to step as inside DIC. A `degraded_fraction` of the faces is shown
    blurred (the bicubic 16x16 -> 128x128 round trip) at the first step, sharpening by a random amount
    towards the HR face at the last step, the way early SR outputs look; the rest see the HR face.
    The first `single_step_until` steps train the first recurrent step only (a quarter of the cost, and
    the branch leaves the empty-heatmap solution there much sooner than through the full unroll).
    """

    degraded_fraction: float = Field(default=0.5, ge=0, le=1)
    unroll_steps: int | None = Field(default=None, ge=1)
    single_step_until: int = Field(default=0, ge=0)


class InitSection(_Strict):
    """Where a run's weights start (the DIC and align stages; `--init` on the command line sets `weights`).

    weights: any facesr checkpoint with the run's model configuration (weights only: the optimiser,
        schedule and step start fresh), e.g. the bundled default or the best checkpoint of earlier runs.
    alignment: a facesr checkpoint whose alignment-branch (`HG.*`) weights replace the branch after
        `weights` is loaded, e.g. the output of an `align` run.
    """

    weights: Path | None = None
    alignment: Path | None = None

    @field_validator("weights", "alignment")
    @classmethod
    def _check_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"checkpoint not found: {value}")
        return value


class PerceptualSection(_Strict):
    """Where the perceptual-loss features come from.

    `lightcnn`: LightCNN-9 `features` loaded from `weights` (the authors' `LightCNN_feature.pth`, or a
    LightCNN-9 face-recognition checkpoint whose first conv is adapted from grey to RGB).
    `hourglass`: the frozen alignment-branch front end of the initial DIC checkpoint (no extra file).
    """

    source: Literal["lightcnn", "hourglass"] = "hourglass"
    weights: Path | None = None

    @model_validator(mode="after")
    def _check_weights(self) -> PerceptualSection:
        if self.source == "lightcnn":
            if self.weights is None:
                raise ValueError(
                    "perceptual.source 'lightcnn' needs perceptual.weights (a local weights file)"
                )
            if not self.weights.is_file():
                raise ValueError(
                    f"perceptual weights file not found: {self.weights} (the LightCNN-9 feature weights "
                    "are not downloaded automatically; give a local file or use source 'hourglass')"
                )
        elif self.weights is not None:
            raise ValueError("perceptual.weights is only used with source 'lightcnn'")
        return self


class GanSection(_Strict):
    """The DICGAN stage: adversarial + perceptual fine-tuning of a trained DIC generator."""

    init_checkpoint: Path
    adversarial: float = Field(default=0.005, ge=0)
    perceptual: float = Field(default=0.1, ge=0)
    perceptual_features: PerceptualSection = PerceptualSection()
    pixel_loss: Literal["per_step", "final_repeated"] = "per_step"
    discriminator_lr: float = Field(default=1e-4, gt=0)

    @field_validator("init_checkpoint")
    @classmethod
    def _check_init(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"gan.init_checkpoint not found: {value} (train the DIC stage first)")
        return value


class TrainSection(_Strict):
    """Length, batch, freezing, EMA and precision of the run."""

    iterations: int = Field(default=150_000, ge=1)
    batch_size: int = Field(default=8, ge=1)
    hg_frozen_until: int = Field(default=0, ge=0)
    ema_decay: float | None = Field(default=None, gt=0, lt=1)
    amp: bool = True
    cpu_bf16: bool = False
    channels_last: bool = False


class LoggingSection(_Strict):
    """How often to log, validate, save and draw images (in steps)."""

    log_every: int = Field(default=50, ge=1)
    val_every: int = Field(default=2000, ge=1)
    save_every: int = Field(default=5000, ge=1)
    image_every: int = Field(default=2000, ge=1)
    tensorboard: bool = True


class TrainConfig(_Strict):
    """A whole training run.

    `stage: align` pre-trains the alignment branch alone, `stage: dic` trains the generator (from the
    authors' init, or from `init`), `stage: dicgan` fine-tunes a DIC generator adversarially (`gan`).
    """

    # at most 64 characters: the name becomes the exported model card's name, which has that limit
    name: str = Field(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    stage: Literal["align", "dic", "dicgan"] = "dic"
    seed: int = 0
    model: ModelSection = ModelSection()
    init: InitSection = InitSection()
    alignment: AlignmentSection = AlignmentSection()
    data: DataSection = DataSection()
    optim: OptimSection = OptimSection()
    loss: LossSection = LossSection()
    train: TrainSection = TrainSection()
    gan: GanSection | None = None
    logging: LoggingSection = LoggingSection()

    @model_validator(mode="after")
    def _check_stage(self) -> TrainConfig:
        if self.stage == "dicgan" and self.gan is None:
            raise ValueError("stage 'dicgan' needs a 'gan' section (with init_checkpoint)")
        if self.stage != "dicgan" and self.gan is not None:
            raise ValueError("the 'gan' section is only used with stage 'dicgan'")
        if self.stage == "dicgan" and (self.init.weights or self.init.alignment):
            raise ValueError("stage 'dicgan' starts from gan.init_checkpoint; the 'init' section is not used")
        if self.stage == "align" and not self.model.build().has_landmarks:
            raise ValueError("stage 'align' needs a model with an alignment branch (landmark_mode != none)")
        if self.stage == "align" and (self.train.ema_decay is not None or self.train.hg_frozen_until):
            raise ValueError(
                "stage 'align' trains the alignment branch: train.ema_decay and "
                "train.hg_frozen_until do not apply to it"
            )
        return self

    def with_init(self, *, weights: Path | None = None, alignment: Path | None = None) -> TrainConfig:
        """This config with `init.weights` / `init.alignment` replaced where given (`facesr train --init`)."""
        init = self.init.model_dump(mode="json")
        if weights is not None:
            init["weights"] = str(weights)
        if alignment is not None:
            init["alignment"] = str(alignment)
        return parse_config({**self.to_plain(), "init": init})

    def dic_config(self) -> DICConfig:
        """The generator configuration of this run."""
        return self.model.build()

    def to_plain(self) -> dict[str, Any]:
        """JSON/YAML-able dict (paths as strings, tuples as lists)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The resolved config as YAML text (every default spelled out)."""
        return yaml.safe_dump(self.to_plain(), sort_keys=False)


def parse_config(data: Any, source: str = "config") -> TrainConfig:
    """Validate a plain mapping; errors name the offending keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        config = TrainConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{source}: invalid training config: {problems}") from exc
    config.dic_config()  # surface DICConfig errors at load time
    return config


def load_config(path: Path | str) -> TrainConfig:
    """Read and validate a YAML training config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_config(data, source=str(path))
