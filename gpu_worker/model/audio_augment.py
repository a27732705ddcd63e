"""Other speakers, simulated: random vocal-tract-length and level changes of log-mel windows in training.

A subject's model learns its lips from one voice, but dubbing drives it with another (measured on the
sample subject: a female espeak-ng voice gave lip-gap r 0.70 where male voices gave 0.89). A longer or
shorter vocal tract scales every formant by about the same factor, which on the mel axis is a warp of
the frequency scale (VTLP: vocal tract length perturbation, as ASR training uses for speaker
invariance); a recording level adds a constant in dB. Each training window gets one random warp and one
level offset, so the mouth must follow what stays the same across voices. Mel features only: AVE and
HuBERT codes are not spectra and pass through unchanged.
"""

from __future__ import annotations

import torch

from gpu_worker.preprocess import audio as audio_mod


class MelAugment:
    """[F, W, 80, T] log-mel windows -> the same, each of the F windows warped and offset at random.

    ``warp``: the largest |log| of the formant scale factor (0.15: factors 0.86..1.16, about the
    spread between adult voices). ``gain_db``: the largest level change in dB.
    """

    def __init__(self, warp: float, gain_db: float) -> None:
        self.warp = float(warp)
        self.gain_db = float(gain_db)
        lo = float(audio_mod.hz_to_mel(audio_mod.F_MIN))
        hi = float(audio_mod.hz_to_mel(audio_mod.F_MAX))
        self.mel_lo, self.mel_step = lo, (hi - lo) / (audio_mod.N_MELS + 1)
        centres_mel = lo + self.mel_step * torch.arange(1, audio_mod.N_MELS + 1, dtype=torch.float64)
        self.centres_hz = torch.from_numpy(audio_mod.mel_to_hz(centres_mel.numpy())).float()  # [80]
        # normalized log-mel units per dB (the [-4, 4] range spans MIN_LEVEL_DB)
        self.units_per_db = 2 * audio_mod.MAX_ABS / -audio_mod.MIN_LEVEL_DB

    @property
    def active(self) -> bool:
        return self.warp > 0 or self.gain_db > 0

    def applies_to(self, feature_shape: tuple[int, ...] | torch.Size) -> bool:
        """Whether windows of features of this shape ([..., 80, T] log-mel) are augmented (draw random numbers)."""
        return self.active and tuple(feature_shape[-2:]) == (audio_mod.N_MELS, audio_mod.WINDOW_FRAMES)

    def draw(self, f: int, generator: torch.Generator) -> torch.Tensor:
        """The random numbers of F windows [F, 2] in [-1, 1) (warp, gain), drawn on the CPU generator."""
        return torch.rand(f, 2, generator=generator) * 2 - 1

    def __call__(self, feats: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.applies_to(feats.shape):
            return feats
        return self.apply(feats, self.draw(feats.shape[0], generator))

    def apply(self, feats: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``feats`` [F, W, 80, T] warped and offset by the draws ``u`` [F, 2] (``draw``), each window by its own
        row: windows drawn at different times can go through in one call."""
        out = feats
        if self.warp > 0:
            alpha = torch.exp(u[:, 0] * self.warp)  # [F] formant scale factor
            # output bin k shows the input's content at f_k / alpha (formants move up for alpha > 1)
            src_hz = (self.centres_hz[None, :] / alpha[:, None]).numpy()  # [F, 80], on the CPU
            src_mel = torch.from_numpy(audio_mod.hz_to_mel(src_hz)).float()  # [F, 80]
            src = ((src_mel - self.mel_lo) / self.mel_step - 1).clamp(0, audio_mod.N_MELS - 1)  # [F, 80]
            lo = src.floor().long().clamp(max=audio_mod.N_MELS - 2)
            frac = (src - lo).to(feats.device, feats.dtype)[:, None, :, None]  # [F, 1, 80, 1]
            lo = lo.to(feats.device)[:, None, :, None].expand(-1, feats.shape[1], -1, feats.shape[3])
            below, above = feats.gather(2, lo), feats.gather(2, lo + 1)  # [F, W, 80, T]
            out = below + frac * (above - below)
        if self.gain_db > 0:
            offset = (u[:, 1] * self.gain_db * self.units_per_db).to(feats.device, feats.dtype)
            out = (out + offset[:, None, None, None]).clamp(-audio_mod.MAX_ABS, audio_mod.MAX_ABS)
        return out
