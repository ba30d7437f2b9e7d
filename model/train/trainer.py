"""The training loop of `facesr train`: data, stage, validation, logging, checkpoints and exact resume.

Run directory (`runs/<name>` unless given):
    config.yaml              the resolved config of the run
    training-state.pt        everything needed to resume (model, optimisers, schedulers, EMA, RNG,
                             step, best and latest validation scores); plain tensors and dicts,
                             loaded with weights_only=True
    best.safetensors         the best-validating generator in the serving format (+ best.config.yaml)
    final.safetensors        the generator at the last step (+ final.config.yaml)
    metrics.jsonl            one JSON record per log / validation event
    tensorboard/             scalars and preview images
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch.utils.data import DataLoader
from tqdm import tqdm

from facesr.model.checkpoint import load_generator
from facesr.model.config import DICConfig
from facesr.model.errors import CheckpointError
from facesr.model.generator import DICGenerator, count_parameters, init_weights
from facesr.train.align_stage import AlignmentStage
from facesr.train.config import ConfigError, InitSection, TrainConfig
from facesr.train.dataset import AugmentedFaces, PlainFaces
from facesr.train.distributed import DistributedContext, setup_distributed, teardown_distributed
from facesr.train.export import export_generator, model_card
from facesr.train.face_folder import FaceFolder
from facesr.train.perceptual import build_feature_extractor
from facesr.train.sampler import EpochSampler
from facesr.train.stages import DICGANStage, DICStage
from facesr.train.state import capture_rng_state, load_training_state, restore_rng_state, save_training_state
from facesr.train.validation import ValidationResult, preview_grid

STATE_FILE = "training-state.pt"
VAL_BATCH_SIZE = 16
PREVIEW_FACES = 4
#: Config keys that may change between a run and its resumption (they do not affect the result).
RESUMABLE_CHANGES = ("train.iterations", "logging.", "data.num_workers", "data.licence", "init.")


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or resumed-and-finished) run produced."""

    output_dir: Path
    step: int
    best_score: float
    best_checkpoint: Path | None
    final_checkpoint: Path | None
    last_validation: ValidationResult | None


def build_generator(config: TrainConfig, *, load_init: bool = True) -> DICGenerator:
    """The generator a run starts from.

    DIC and align stages: the SR branch gets the authors' init (kaiming-normal fan-in, zero bias); the
    alignment branch keeps PyTorch's default init, because kaiming init on the no-BN recurrent
    hourglass makes its heatmaps explode (~1e10 after 4 steps). Then `init.weights` (a whole facesr
    checkpoint of the same model configuration) and `init.alignment` (only its alignment branch, which
    must have the run's shapes) replace what they hold. `load_init=False` (a resumed run, whose state
    holds the weights) skips both.
    DICGAN stage: the weights of `gan.init_checkpoint` (a facesr checkpoint of a DIC run).
    """
    generator = DICGenerator(config.dic_config())
    if config.gan is not None:
        if load_init:
            _load_weights(generator, config.gan.init_checkpoint, "gan.init_checkpoint")
        return generator
    for name, child in generator.named_children():
        if name != "HG":
            init_weights(child)
    if load_init and config.init.weights is not None:
        _load_weights(generator, config.init.weights, "init.weights")
    if load_init and config.init.alignment is not None:
        _load_alignment(generator, config.init.alignment, "init.alignment")
    return generator


def _checkpoint_generator(path: Path, role: str, config: DICConfig | None = None) -> DICGenerator:
    """The generator of a facesr checkpoint (`load_generator`), its problems as ConfigErrors of `role`."""
    try:
        return load_generator(path, config=config).generator
    except CheckpointError as error:
        raise ConfigError(f"{role}: {error}") from error


def _load_weights(generator: DICGenerator, path: Path, role: str) -> None:
    """Copy every weight of a facesr checkpoint, which must have the generator's configuration."""
    generator.load_state_dict(_checkpoint_generator(path, role, generator.config).state_dict())


def _load_alignment(generator: DICGenerator, path: Path, role: str) -> None:
    """Copy the alignment branch (`HG`) of a facesr checkpoint, which must have the run's shapes."""
    source = _checkpoint_generator(path, role)
    own = generator.HG.state_dict() if generator.HG is not None else {}
    theirs = source.HG.state_dict() if source.HG is not None else {}
    mismatched = sorted(
        key for key in own if key not in theirs or tuple(theirs[key].shape) != tuple(own[key].shape)
    )
    if generator.HG is None or not theirs or mismatched:
        raise ConfigError(
            f"{role} {path}: its model {source.config.to_dict()} does not fit this run's "
            f"{generator.config.to_dict()} (e.g. {', '.join(mismatched[:3]) or 'no alignment branch'})"
        )
    generator.HG.load_state_dict({key: theirs[key] for key in own})


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for key in keys for d in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _saved_init(saved: dict[str, Any]) -> InitSection:
    """The `init` section of a saved config, not re-validated (its files need not exist any more)."""
    init = saved.get("init") or {}
    weights, alignment = (init.get(key) for key in ("weights", "alignment"))
    return InitSection.model_construct(
        weights=None if weights is None else Path(weights),
        alignment=None if alignment is None else Path(alignment),
    )


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with every key a newer version added filled in with its default.

    The saved `init` is left out of validation (its files may have moved since: they are not read
    again when resuming).
    """
    try:
        return {**TrainConfig.model_validate({**saved, "init": {}}).to_plain(), "init": saved.get("init")}
    except ValidationError:
        return saved  # compared as it is; the differences name what changed


def check_resumable(saved: dict[str, Any], current: TrainConfig) -> None:
    """Refuse to resume when the config changed in a way that would change the result."""
    changed = [
        key
        for key in _differences(_with_defaults(saved), current.to_plain())
        if not any(key == allowed.rstrip(".") or key.startswith(allowed) for allowed in RESUMABLE_CHANGES)
    ]
    if changed:
        raise ConfigError(
            f"cannot resume: the config differs from the saved run in {', '.join(changed)} "
            f"(only {', '.join(RESUMABLE_CHANGES)} may change); start a new output directory instead"
        )


class MetricsLog:
    """Rank-0 sink for scalars: metrics.jsonl always, TensorBoard when enabled."""

    def __init__(self, output_dir: Path, enabled: bool, tensorboard: bool, start_step: int) -> None:
        self.enabled = enabled
        self.jsonl = output_dir / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: heavy

            self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_step or None)

    def scalars(self, kind: str, step: int, values: dict[str, float | int | None]) -> None:
        if not self.enabled:
            return
        with self.jsonl.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        if self.writer is not None:
            for name, value in values.items():
                if value is not None:  # None: not measured in this stage
                    self.writer.add_scalar(f"{kind}/{name}", value, step)

    def image(self, tag: str, step: int, image_chw: torch.Tensor) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_image(tag, image_chw, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Trainer:
    """One training run; `run()` trains from the current step up to `train.iterations`."""

    def __init__(
        self,
        config: TrainConfig,
        output_dir: Path,
        context: DistributedContext,
        *,
        resume: bool = False,
        progress: bool = True,
        time_limit_s: float | None = None,
    ) -> None:
        self.config = config
        self.time_limit_s = time_limit_s
        self.output_dir = output_dir
        self.context = context
        self.progress = progress and context.is_main
        self.state_path = output_dir / STATE_FILE
        saved = self._load_saved_state(resume)
        if saved is not None:  # where the run started is part of its record (config.yaml, cards)
            config = config.model_copy(update={"init": _saved_init(saved["config"])})
            self.config = config
        if config.stage == "align" and context.is_distributed:
            raise ConfigError(
                "stage 'align' runs in one process (about 0.65 CPU-hours at the CPU width); "
                "start it without torchrun"
            )
        torch.manual_seed(config.seed)  # the same initial weights (and EMA start) on every rank

        folder = FaceFolder.open(config.data.root)
        train_indices, val_indices = folder.split(config.data.val_count, config.data.val_seed)
        self.train_set = AugmentedFaces(folder, train_indices, config.data.augment, seed=config.seed)
        self.val_set = PlainFaces(folder, val_indices)
        self.sampler = EpochSampler(
            self.train_set, num_replicas=context.world_size, rank=context.rank, seed=config.seed
        )
        self.steps_per_epoch = self.sampler.num_samples // config.train.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"batch size {config.train.batch_size} is larger than the "
                f"{self.sampler.num_samples} training faces per process"
            )
        self.loader = self._loader(self.train_set, self.sampler, config.train.batch_size)
        self.val_loader = DataLoader(self.val_set, batch_size=VAL_BATCH_SIZE, shuffle=False, num_workers=0)

        generator = build_generator(config, load_init=saved is None)
        self.stage = self._build_stage(generator)
        self.step = 0
        self.cpu_seconds_before = 0.0  # CPU time spent by earlier stretches of this run
        self.best_score = -math.inf
        self.last_validation: ValidationResult | None = None
        if saved is not None:
            self._restore(saved)
        self.log = MetricsLog(output_dir, context.is_main, config.logging.tensorboard, self.step)

    # -- set-up --------------------------------------------------------------------------------------
    def _load_saved_state(self, resume: bool) -> dict[str, Any] | None:
        if resume:
            saved = load_training_state(self.state_path)
            check_resumable(saved["config"], self.config)
            if saved["world_size"] != self.context.world_size:
                raise ConfigError(
                    f"cannot resume exactly: the run used {saved['world_size']} processes, this one has "
                    f"{self.context.world_size} (the data order depends on it)"
                )
            return saved
        if self.state_path.exists():
            raise ConfigError(
                f"{self.output_dir} already holds a run ({STATE_FILE}); pass --resume to continue it or "
                "choose another --output"
            )
        return None

    def _loader(self, dataset: AugmentedFaces, sampler: EpochSampler, batch_size: int) -> DataLoader:
        workers = self.config.data.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=workers,
            pin_memory=self.context.device.type == "cuda",
            persistent_workers=workers > 0,
        )

    def _build_stage(self, generator: DICGenerator) -> DICStage | AlignmentStage:
        if self.config.stage == "align":
            return AlignmentStage(self.config, generator, self.context)
        if self.config.stage == "dicgan":
            if self.config.gan is None:  # TrainConfig refuses this; the check narrows the type
                raise ConfigError("stage 'dicgan' needs a 'gan' section")
            features = build_feature_extractor(self.config.gan.perceptual_features, generator)
            return DICGANStage(self.config, generator, self.context, features)
        return DICStage(self.config, generator, self.context)

    def _restore(self, saved: dict[str, Any]) -> None:
        self.stage.load_state_dict(saved["stage"])
        self.step = int(saved["step"])
        # states written before the align stage existed kept the score under its PSNR name
        self.best_score = float(saved.get("best_score", saved.get("best_psnr_y", -math.inf)))
        self.cpu_seconds_before = float(saved.get("cpu_seconds", 0.0))
        if saved.get("last_validation") is not None:  # absent in states written before it was saved
            self.last_validation = ValidationResult.from_dict(saved["last_validation"])
        restore_rng_state(saved["rng"][self.context.rank])

    # -- persistence ---------------------------------------------------------------------------------
    def save_state(self) -> None:
        """Write the training state (all ranks take part in gathering the RNG states; rank 0 writes)."""
        rng_states = self.context.gather(capture_rng_state())
        if not self.context.is_main:
            return
        save_training_state(
            self.state_path,
            {
                "step": self.step,
                "config": self.config.to_plain(),
                "world_size": self.context.world_size,
                "stage": self.stage.state_dict(),
                "best_score": self.best_score,
                "cpu_seconds": self.cpu_seconds_before + time.process_time(),
                # so that a resumed run's cards (and a finished run resumed again) keep the latest scores
                "last_validation": self.last_validation.as_dict() if self.last_validation else None,
                "rng": rng_states,
            },
        )

    def _export(self, name: str, generator: DICGenerator, metrics: dict[str, Any]) -> Path:
        card = model_card(
            self.config,
            step=self.step,
            metrics=metrics,
            train_count=len(self.train_set),
            val_count=len(self.val_set),
        )
        return export_generator(self.output_dir / f"{name}.safetensors", generator, self.config, card)

    # -- the loop ------------------------------------------------------------------------------------
    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Endless batches from the current step on, in the exact order a straight run would see."""
        step = self.step
        batch_size = self.config.train.batch_size
        while True:
            epoch, offset = divmod(step, self.steps_per_epoch)
            self.sampler.set_position(epoch, offset * batch_size)
            for batch in self.loader:
                yield batch
                step += 1

    def _validate(self) -> None:
        """Rank 0 scores the evaluation weights, exports `best` on improvement and logs previews."""
        if self.context.is_main:
            generator = self.stage.evaluation_generator()
            result = self.stage.validate(generator, self.val_loader)
            self.last_validation = result
            self.log.scalars("val", self.step, {**result.as_dict(), "cpu_hours": self._cpu_hours()})
            if self.stage.score(result) > self.best_score:
                self.best_score = self.stage.score(result)
                self._export("best", generator, self._card_metrics(result))
            if self.step % self.config.logging.image_every == 0 or self.step == self.config.train.iterations:
                preview = next(iter(DataLoader(self.val_set, batch_size=PREVIEW_FACES, shuffle=False)))
                self.log.image(
                    "val/lr_steps_hr", self.step, preview_grid(generator, preview, self.context.device)
                )
        self.context.barrier()

    def _cpu_hours(self) -> float:
        """CPU time of this run so far (all threads of this process, earlier stretches included)."""
        return (self.cpu_seconds_before + time.process_time()) / 3600.0

    def _card_metrics(self, result: ValidationResult) -> dict[str, Any]:
        return {
            "step": self.step,
            "validation": {"set": f"{len(self.val_set)} held-out training faces", **result.as_dict()},
        }

    def _mean_over_ranks(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        """Per-step means of the summed loss parts, averaged over all ranks (one all-reduce)."""
        keys = sorted(sums)
        stacked = self.context.mean(torch.stack([sums[key].to(self.context.device) for key in keys]) / count)
        return dict(zip(keys, stacked.tolist(), strict=True))

    def _out_of_time(self, run_started: float) -> bool:
        """Whether the wall-clock limit is reached (rank 0 decides, so that all ranks stop together)."""
        if self.time_limit_s is None:
            return False
        expired = torch.tensor(float(time.perf_counter() - run_started >= self.time_limit_s))
        if self.context.is_distributed:
            torch.distributed.broadcast(expired.to(self.context.device), src=0)
        return bool(expired)

    def run(self) -> TrainResult:
        """Train up to `train.iterations` (or the time limit); saves state on the way and on Ctrl-C.

        Stopping at the time limit validates, saves the state and exports `final`; `--resume` later
        continues exactly where it stopped.
        """
        config = self.config
        run_started = time.perf_counter()
        if self.context.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
        total = config.train.iterations
        bar = tqdm(
            total=total,
            initial=self.step,
            disable=not self.progress,
            desc=config.name,
            unit="step",
            dynamic_ncols=True,
        )
        sums: dict[str, torch.Tensor] = {}
        count = 0
        started = time.perf_counter()
        batches = self._batches()
        try:
            while self.step < total:
                parts = self.stage.train_step(next(batches), self.step)
                self.step += 1
                stopping = self._out_of_time(run_started)
                for key, value in parts.items():
                    sums[key] = sums[key] + value.float() if key in sums else value.float()
                count += 1
                bar.update(1)
                if self.step % config.logging.log_every == 0 or self.step == total or stopping:
                    means = self._mean_over_ranks(sums, count)
                    elapsed = time.perf_counter() - started
                    self.log.scalars(
                        "train",
                        self.step,
                        {**means, "lr": self.stage.learning_rate, "seconds_per_step": elapsed / count},
                    )
                    bar.set_postfix(loss=f"{means['total']:.4f}", refresh=False)
                    sums, count, started = {}, 0, time.perf_counter()
                if self.step % config.logging.val_every == 0 or self.step == total or stopping:
                    self._validate()
                    if self.last_validation is not None:
                        bar.set_postfix(
                            {
                                key: f"{value:.4g}"
                                for key, value in self.last_validation.as_dict().items()
                                if key in ("psnr_y", "psnr_y_bicubic", "nrmse") and value is not None
                            },
                            refresh=False,
                        )
                if self.step % config.logging.save_every == 0 or self.step == total or stopping:
                    self.save_state()
                if stopping:
                    tqdm.write(f"{config.name}: time limit reached at step {self.step}; resume with --resume")
                    break
        except KeyboardInterrupt:
            self.save_state()
            raise
        finally:
            bar.close()
            self.log.close()
        final = None
        if self.context.is_main:
            metrics = (
                self._card_metrics(self.last_validation) if self.last_validation else {"step": self.step}
            )
            final = self._export("final", self.stage.evaluation_generator(), metrics)
        best = self.output_dir / "best.safetensors"
        return TrainResult(
            output_dir=self.output_dir,
            step=self.step,
            best_score=self.best_score,
            best_checkpoint=best if best.is_file() else None,
            final_checkpoint=final,
            last_validation=self.last_validation,
        )


def run_training(
    config: TrainConfig,
    output_dir: Path | None = None,
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    time_limit_s: float | None = None,
) -> TrainResult:
    """Set up the process group (under torchrun), train, and tear it down again."""
    output_dir = output_dir or Path("runs") / config.name
    context = setup_distributed(device)
    try:
        trainer = Trainer(
            config, output_dir, context, resume=resume, progress=progress, time_limit_s=time_limit_s
        )
        if context.is_main:
            generator = trainer.stage.evaluation_generator()
            tqdm.write(
                f"{config.name}: stage {config.stage}, {count_parameters(generator):,} generator parameters, "
                f"{len(trainer.train_set)} train / {len(trainer.val_set)} val faces, "
                f"device {context.device}, "
                f"{context.world_size} process(es), step {trainer.step} of {config.train.iterations}"
            )
        return trainer.run()
    finally:
        teardown_distributed()
