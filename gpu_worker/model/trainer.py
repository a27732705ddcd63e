"""Training: the head, lips and torso stages of METHOD.md 3, with EMA, AMP, checkpoints and exact resume.

``train_model`` is the stage function (a Celery task or the CLI calls it). Every random draw comes
from the trainer's generators, whose states are checkpointed with the optimizer, scheduler, grid and
EMA, so a run stopped at any checkpoint and resumed takes exactly the same next step.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gpu_worker.model import kernels
from gpu_worker.model.audio_augment import MelAugment
from gpu_worker.model.audio_net import window_indices
from gpu_worker.model.checkpoint import CheckpointError, check_compatible, load_checkpoint, save_atomic
from gpu_worker.model.config import PATCH_LOSSES, ConfigError, RunConfig
from gpu_worker.model.datamanager import DataManager, RayBatch
from gpu_worker.model.dataparser import lip_shape, parse_dataset
from gpu_worker.model.loading import CHECKPOINT, FINAL, pick_device
from gpu_worker.model.losses import (
    alpha_entropy,
    lpips_patch_loss,
    masked_attention,
    photometric,
    structural_patch_loss,
)
from gpu_worker.model.lpips import LPIPS, load_lpips, lpips_dir
from gpu_worker.model.model import ModelSpec, SyncTalkModel, composite
from shared.errors import SyncTalkError

ProgressFn = Callable[[str, float, str], None]


class TrainingError(SyncTalkError):
    code = "training_failed"


class TrainingInterrupted(Exception):
    """Training stopped because ``stop_when()`` said so, right after a checkpoint of ``global_step``:
    resuming from that checkpoint takes exactly the next step (a worker shutting down hands its stage
    back this way)."""

    def __init__(self, global_step: int) -> None:
        super().__init__(f"training stopped at step {global_step} (checkpointed)")
        self.global_step = global_step


@dataclass
class TrainResult:
    model_dir: Path
    global_step: int
    stages_done: list[str]
    history: list[dict] = field(default_factory=list)  # {"stage", "step", "loss", "psnr"} per step
    seconds: float = 0.0


def spec_from_info(info) -> ModelSpec:
    return ModelSpec(
        n_frames=info.frame_count,
        feature_shape=info.feature_shape,
        audio_encoder=info.audio_encoder,
        aabb=tuple(float(v) for v in info.aabb),
        resolution=info.resolution,
        intrinsics=tuple(float(v) for v in info.intrinsics),
        audio_level=info.audio_level,
    )


class Trainer:
    def __init__(
        self,
        dataset_dir: str | Path,
        out_dir: str | Path,
        config: RunConfig,
        *,
        device: str | torch.device | None = None,
        progress: ProgressFn | None = None,
        weights_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.dataset_dir = Path(dataset_dir)
        self.device = pick_device(device)
        self.progress = progress
        self.info = parse_dataset(dataset_dir, config.data.resolution)
        self.spec = spec_from_info(self.info)
        torch.manual_seed(config.trainer.seed)  # the weights' initialization is part of the run
        self.model = SyncTalkModel(config, self.spec).to(self.device)
        train_poses = torch.from_numpy(self.info.poses[self.info.train_ids])
        self.model.torso.set_pose_stats(train_poses.to(self.device))
        train_exp = torch.from_numpy(self.info.expression[self.info.train_ids])
        self.model.field.set_expression_stats(train_exp.to(self.device))
        self.dm = DataManager(self.info, config.data, self.device)
        self.feats = torch.from_numpy(self.info.audio_features).to(self.device)  # [N, *shape]
        self.audio_augment = MelAugment(config.data.audio_warp, config.data.audio_gain_db)
        self.expr = torch.from_numpy(self.info.expression).to(self.device)  # [N, 7]
        # lip-shape targets of the auxiliary loss, standardized over the training frames
        shape = lip_shape(self.info.landmarks)  # [N, 10]
        train_shape = shape[self.info.train_ids]
        # (a floor on the spread: a mouth that barely moves gives targets near 0, not amplified noise)
        shape = (shape - train_shape.mean(0)) / np.maximum(train_shape.std(0), 1e-3)
        self.lip_target = torch.from_numpy(shape).to(self.device)  # [N, 10]
        self.gen = torch.Generator().manual_seed(config.trainer.seed)  # data, grid cells
        self.march_gen = torch.Generator(device=self.device).manual_seed(config.trainer.seed + 1)
        self.use_amp = config.trainer.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.ema = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        self.stage_pos = 0  # index into config.stages
        self.stage_step = 0
        self.global_step = 0
        self.stages_done: list[str] = []
        self.history: list[dict] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.lpips = self._load_patch_net(weights_dir)

    def _load_patch_net(self, weights_dir: Path | None) -> LPIPS | None:
        """The LPIPS network where the lips stage's patch loss is LPIPS (``LossConfig.patch_loss``).

        ``weights_dir``: the folder of model weight files (``settings.model_dir``; the process's
        settings when None), not the run's output folder."""
        choice = self.config.loss.patch_loss
        if choice not in PATCH_LOSSES:
            raise ConfigError(f"loss.patch_loss must be one of {', '.join(PATCH_LOSSES)}, got {choice!r}")
        if choice == "structural" or "lips" not in self.config.stages:
            return None
        if weights_dir is None:
            from shared.settings import get_settings

            weights_dir = get_settings().model_dir
        net = load_lpips(weights_dir, self.device)
        if net is None and choice == "lpips":
            raise TrainingError(
                f"loss.patch_loss is 'lpips' but {lpips_dir(weights_dir)} does not exist "
                "(docs/MODEL.md, LPIPS); use 'auto' to fall back to the structural loss"
            )
        return net

    @property
    def patch_loss(self) -> str:
        """What the lips stage's patch loss is in this run: ``lpips`` or ``structural``."""
        return "lpips" if self.lpips is not None else "structural"

    # ---- optimiser per stage ------------------------------------------------------------------
    def _build_optimizer(self, stage: str) -> None:
        t = self.config.trainer
        if stage == "torso":
            grids, mlps = self.model.torso_param_groups()
        else:
            grids, mlps = self.model.head_param_groups()
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in [*grids, *mlps]:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(
            [
                {"params": grids, "lr": t.lr_grid, "weight_decay": 0.0},
                {"params": mlps, "lr": t.lr_mlp, "weight_decay": t.weight_decay},
            ],
            betas=(0.9, 0.99),
            eps=1e-15,
            # a few fused calls per step instead of ~10 per parameter tensor. On the CPU foreach is a loop
            # over the tensors; the fused kernel does it in one pass (same update up to rounding:
            # tests/model/test_train_step_fast_paths.py). CUDA keeps foreach, as measured with the GradScaler.
            **({"fused": True} if self.device.type == "cpu" else {"foreach": True}),
        )
        total = max(self.config.steps_of(stage), 1)
        final = t.lr_final_factor
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: final ** min(s / total, 1.0)
        )

    # ---- state ----------------------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "architecture": self.config.architecture(),
            "spec": self.spec.to_dict(),
            "config": self.config.to_dict(),
            "stage": self.config.stages[self.stage_pos] if self.stage_pos < len(self.config.stages) else None,
            "stage_step": self.stage_step,
            "global_step": self.global_step,
            "stages_done": list(self.stages_done),
            "model": self.model.state_dict(),
            "ema": self.ema,
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "rng": {
                "gen": self.gen.get_state(),
                "march": self.march_gen.get_state(),
                "torch": torch.get_rng_state(),
            },
            "history": self.history,
        }

    def save_checkpoint(self) -> Path:
        path = self.out_dir / CHECKPOINT
        save_atomic(self._state(), path)
        return path

    def load_checkpoint(self, path: Path | None = None) -> None:
        path = path or self.out_dir / CHECKPOINT
        payload = load_checkpoint(path, self.device)
        check_compatible(payload, self.config.architecture(), self.spec.to_dict(), path)
        try:
            self.model.load_state_dict(payload["model"])
            self.ema = {k: v.to(self.device) for k, v in payload["ema"].items()}
            self.stages_done = list(payload["stages_done"])
            self.global_step = int(payload["global_step"])
            self.history = list(payload.get("history", []))
            stage = payload["stage"]
            # generator states are CPU byte tensors even for a CUDA generator (map_location moved them)
            self.gen.set_state(payload["rng"]["gen"].cpu())
            self.march_gen.set_state(payload["rng"]["march"].cpu())
            torch.set_rng_state(payload["rng"]["torch"].cpu())
            self.scaler.load_state_dict(payload["scaler"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} is incomplete or inconsistent: {exc}") from exc
        todo = [s for s in self.config.stages if s not in self.stages_done]
        self.stage_pos = self.config.stages.index(todo[0]) if todo else len(self.config.stages)
        self.stage_step = 0
        if todo and stage == todo[0] and payload["optimizer"] is not None:
            self._build_optimizer(stage)
            self.optimizer.load_state_dict(payload["optimizer"])
            self.scheduler.load_state_dict(payload["scheduler"])
            self.stage_step = int(payload["stage_step"])

    def save_final(self) -> Path:
        """model.pt: EMA weights and what is needed to render (no optimizer state)."""
        state = self.model.state_dict()
        state.update({k: v for k, v in self.ema.items()})
        path = self.out_dir / FINAL
        save_atomic(
            {
                "architecture": self.config.architecture(),
                "spec": self.spec.to_dict(),
                "config": self.config.to_dict(),
                "model": state,
                "global_step": self.global_step,
                "stages_done": list(self.stages_done),
                "dataset": str(self.dataset_dir.resolve()),
            },
            path,
        )
        return path

    def _write_config(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        doc = {
            "config": self.config.to_dict(),
            "dataset": str(self.dataset_dir.resolve()),
            "spec": self.spec.to_dict(),
            "device": str(self.device),
            "kernels": kernels.backend_name(self.device),
            # what computes the grids: tinycudann or cuda_ext (per grid_layout and host)
            "hash_grids": {
                "head": self.model.field.planes[0].backend,
                "torso": self.model.torso.grid.backend,
            },
            "patch_loss": self.patch_loss,
            "torch": torch.__version__,
        }
        tmp = self.out_dir / ".config.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(self.out_dir / "config.json")

    # ---- steps ------------------------------------------------------------------------------------
    def _audio_codes(self, frames: torch.Tensor, draws: torch.Tensor | None = None) -> torch.Tensor:
        """Frames [F] -> their audio codes enc_a [F, A] (each from its window of features). ``draws``
        [F, 2] (``_augment_draws``): each window goes through the speaker augmentation with its row first
        (the losses that teach the audio)."""
        idx = window_indices(frames, self.config.audio.window, self.spec.n_frames)  # [F, W]
        feats = self.feats[idx]  # [F, W, *feature_shape]
        if draws is not None:
            feats = self.audio_augment.apply(feats, draws)
        return self.model.audio_code(feats)

    def _augment_draws(self, f: int) -> torch.Tensor | None:
        """The speaker augmentation's random numbers for F windows [F, 2], or None where it does not apply."""
        if not self.audio_augment.applies_to(self.spec.feature_shape):
            return None
        return self.audio_augment.draw(f, self.gen)

    def _conditions(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        enc_a = self._audio_codes(torch.tensor([index], device=self.device))[0]  # [A]
        return enc_a, self.expr[index]

    def _update_grid(self) -> None:
        ids = self.info.train_ids
        picks = torch.randint(len(ids), (self.config.renderer.grid_audio_samples,), generator=self.gen)
        with torch.no_grad():
            conds = [self._conditions(int(ids[int(p)])) for p in picks]
        self.model.update_grid(conds, self.gen)

    def _step_audio_codes(self, frames: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augmented audio codes of the step's frames [F, A] and, with the lip-sync loss on, the loss's
        frames and theirs ([B], [B, A]), from one audio-net call: the net treats each window alone, so
        it gives what two calls did, up to rounding. The random draws are made in the order two calls
        made them (the step's augmentation, the loss's frames, their augmentation): the same run."""
        step = torch.tensor(frames, device=self.device)  # [F]
        draws = [self._augment_draws(len(frames))]
        lip = None
        if self.config.loss.lip_sync > 0:
            ids = self.info.train_ids
            picks = torch.randint(len(ids), (self.config.loss.lip_sync_frames,), generator=self.gen)
            lip = torch.as_tensor(ids[picks.numpy()], device=self.device)  # [B]
            draws.append(self._augment_draws(len(lip)))
        both = step if lip is None else torch.cat([step, lip])  # [F + B]
        codes = self._audio_codes(both, None if draws[0] is None else torch.cat(draws))  # [F + B, A]
        return codes[: len(frames)], None if lip is None else (lip, codes[len(frames) :])

    def _head_step(self, stage: str, batch: RayBatch) -> tuple[torch.Tensor, torch.Tensor]:
        lc = self.config.loss
        enc_a, lip = self._step_audio_codes([batch.index] if batch.group is None else batch.frames)
        if batch.group is None:
            enc_a, exp = enc_a[0], self.expr[batch.index]  # [A], [7]
            latent = self.model.head_latent(batch.index)
        else:  # rays of several frames: their conditions [F, ...], gathered per sample by group
            frames = torch.tensor(batch.frames, device=self.device)
            exp = self.expr[frames]  # [F, 7]
            latent = self.model.field.latents(frames)  # [F, L]
        head = self.model.render_head(
            batch.rays_o,
            batch.rays_d,
            enc_a,
            exp,
            latent,
            perturb=True,
            generator=self.march_gen,
            group=batch.group,
        )
        pred = composite(head["image"], head["alpha"], None, batch.bg)  # bg: torso over plate
        losses = photometric(pred, batch.rgb, head["unc"], lc)
        losses["entropy"] = lc.alpha_entropy * alpha_entropy(head["alpha"])
        losses["attention"] = lc.attention * masked_attention(
            head["attn_a"], head["attn_e"], batch.lower_face
        )
        if stage == "lips" and batch.patches:
            if self.lpips is not None:
                patch = lpips_patch_loss(pred, batch.rgb, batch.patches, self.lpips)
            else:
                patch = structural_patch_loss(pred, batch.rgb, batch.patches)
            losses["patch"] = lc.patch_structure * patch
        if lip is not None:
            losses["lip_sync"] = lc.lip_sync * self._lip_sync_loss(*lip)
        return sum(losses.values()), pred

    def _lip_sync_loss(self, frames: torch.Tensor, enc_a: torch.Tensor) -> torch.Tensor:
        """MSE of the lip shape predicted from the audio codes [B, A] of a few random training frames [B]."""
        pred = self.model.lip_head(enc_a.float())  # [B, 10]
        return ((pred - self.lip_target[frames]) ** 2).mean()

    def _torso_step(self, batch: RayBatch) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            enc_a, exp = self._conditions(batch.index)
            head = self.model.render_head(
                batch.rays_o, batch.rays_d, enc_a, exp, self.model.head_latent(batch.index), perturb=False
            )
        pose = self.dm.poses[batch.index].to(self.device)
        rgba = self.model.render_torso(batch.px, pose, enc_a, batch.index)
        pred = composite(head["image"], head["alpha"], rgba, batch.plate)
        loss = (pred - batch.rgb).abs().mean()
        loss = loss + self.config.loss.torso_alpha * (rgba[:, 3] - batch.torso[:, 3]).abs().mean()
        return loss, pred

    def step(self, stage: str) -> dict:
        t = self.config.trainer
        self.model.train()
        if stage != "torso" and self.stage_step % max(self.config.renderer.update_every, 1) == 0:
            self._update_grid()
        batch = self.dm.sample(stage, self.gen)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            loss, pred = self._torso_step(batch) if stage == "torso" else self._head_step(stage, batch)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {float(loss)} at {stage} step {self.stage_step}; lower the learning rate"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # the scaler skips the optimizer step when the fp16 gradients overflowed (and lowers its
        # scale): the learning-rate schedule advances only with the steps actually taken
        if not self.scaler.is_enabled() or self.scaler.get_scale() >= scale:
            self.scheduler.step()
        with torch.no_grad():
            # ema = d * ema + (1 - d) * p over the trained parameters, in one fused call
            trained = [(k, p) for k, p in self.model.named_parameters() if p.requires_grad]
            torch._foreach_lerp_([self.ema[k] for k, _ in trained], [p for _, p in trained], 1 - t.ema_decay)
            mse = ((pred.detach().float() - batch.rgb) ** 2).mean()
        self.stage_step += 1
        self.global_step += 1
        rec = {
            "stage": stage,
            "step": self.global_step,
            "loss": float(loss.detach()),
            "l1": float((pred.detach().float() - batch.rgb).abs().mean()),
            "psnr": float(-10 * torch.log10(mse.clamp_min(1e-10))),
        }
        self.history.append(rec)
        return rec

    # ---- the loop ---------------------------------------------------------------------------------
    def _enter_stage(self, stage: str) -> None:
        if stage in ("lips", "torso") and "head" not in self.stages_done:
            raise TrainingError(
                f"the {stage} stage needs a trained head: include 'head' in --stages, or --resume a run that has it"
            )
        if stage == "torso":
            # the head is frozen from here on: render it with its EMA weights, as evaluation does
            with torch.no_grad():
                for k, p in self.model.named_parameters():
                    if not k.startswith("torso."):
                        p.copy_(self.ema[k])
        self._build_optimizer(stage)
        self.stage_step = 0

    def run(
        self, *, stop_after: int | None = None, stop_when: Callable[[], bool] | None = None
    ) -> TrainResult:
        """Train the remaining stages. ``stop_after``: stop (after a checkpoint) at that global step.
        ``stop_when()`` is asked after every step: when true, a checkpoint is written and
        TrainingInterrupted raised."""
        self._write_config()
        total = sum(self.config.steps_of(s) for s in self.config.stages)
        start_time = time.monotonic()
        start_step = self.global_step
        while self.stage_pos < len(self.config.stages):
            stage = self.config.stages[self.stage_pos]
            n = self.config.steps_of(stage)
            if self.optimizer is None or self.stage_step == 0:
                self._enter_stage(stage)
            while self.stage_step < n:
                rec = self.step(stage)
                last = self.stage_step == n
                if last:
                    self.stages_done.append(stage)
                    self.stage_pos += 1
                    self.optimizer = None
                if self.global_step % self.config.trainer.checkpoint_every == 0 or last:
                    self.save_checkpoint()
                if last:
                    self.save_final()
                self._report(stage, rec, total, start_time, start_step)
                if stop_after is not None and self.global_step >= stop_after:
                    if not last:
                        self.save_checkpoint()
                    return self._result(start_time)
                if stop_when is not None and stop_when():
                    self.save_checkpoint()
                    raise TrainingInterrupted(self.global_step)
        return self._result(start_time)

    def _report(self, stage: str, rec: dict, total: int, start_time: float, start_step: int) -> None:
        if self.progress is None:
            return
        every = self.config.trainer.log_every
        if rec["step"] % every and rec["step"] != total:
            return
        done = self.global_step - start_step
        rate = (time.monotonic() - start_time) / max(done, 1)
        eta = rate * max(total - self.global_step, 0)
        self.progress(
            f"train:{stage}",
            min(self.global_step / max(total, 1), 1.0),
            f"step {self.global_step}/{total} loss {rec['loss']:.4f} psnr {rec['psnr']:.2f} eta {_fmt(eta)}",
        )

    def _result(self, start_time: float) -> TrainResult:
        return TrainResult(
            model_dir=self.out_dir,
            global_step=self.global_step,
            stages_done=list(self.stages_done),
            history=list(self.history),
            seconds=time.monotonic() - start_time,
        )


def _fmt(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"


def train_model(
    dataset_dir: str | Path,
    out_dir: str | Path,
    config: RunConfig,
    *,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
    stop_after: int | None = None,
    stop_when: Callable[[], bool] | None = None,
    weights_dir: Path | None = None,
) -> TrainResult:
    """Train (or resume training) a model on a dataset into ``out_dir`` (config.json, checkpoints, model.pt).

    ``weights_dir``: where optional weight files (LPIPS) are looked for; the settings' model_dir by default.
    """
    out = Path(out_dir)
    trainer = Trainer(dataset_dir, out, config, device=device, progress=progress, weights_dir=weights_dir)
    ckpt = out / CHECKPOINT
    if resume and ckpt.exists():
        trainer.load_checkpoint(ckpt)
    elif ckpt.exists() and not resume:
        raise TrainingError(
            f"{out} already holds a training run; pass --resume to continue it or pick a new folder"
        )
    return trainer.run(stop_after=stop_after, stop_when=stop_when)


def train(
    dataset_dir: str | Path,
    model_dir: str | Path,
    *,
    profile: str = "preview",
    stages: str | None = None,
    resume: bool = False,
    settings=None,
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
    steps_scale: float = 1.0,
    stop_when: Callable[[], bool] | None = None,
) -> TrainResult:
    """Stage function by profile name (the CLI, the demo and the worker call this). ``settings``:
    where optional weight files (LPIPS) are looked for (its ``model_dir``). ``steps_scale``
    multiplies every stage's steps (quick tries). ``stop_when``: see ``Trainer.run``."""
    from gpu_worker.model.config import profile_config, scale_steps

    return train_model(
        dataset_dir,
        model_dir,
        scale_steps(profile_config(profile, stages), steps_scale),
        resume=resume,
        device=device,
        progress=progress,
        stop_when=stop_when,
        weights_dir=settings.model_dir if settings is not None else None,
    )
