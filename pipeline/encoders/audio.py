"""Audio encoder base: one embedding per 1-second segment waveform."""
from __future__ import annotations

import torch

from pipeline.encoders.base import Encoder


class AudioEncoder(Encoder):
    """``forward(wave (B, sample_rate))`` -> ``(B, dim)``; frontend runs in float32 even under
    autocast (log-mel in half precision loses the quiet bands)."""

    modality = "audio"
    sample_rate: int = 16000
    dim: int = 128

    def prepare(self, samples: torch.Tensor) -> torch.Tensor:
        return samples.float()

    def encode_segments(self, samples: torch.Tensor) -> torch.Tensor:
        """``(B, T, sample_rate)`` float waveform -> ``(B, T, dim)`` float32."""
        b, t, s = samples.shape
        if s != self.sample_rate:
            raise ValueError(f"{self.name}: expected {self.sample_rate} samples per segment, got {s}")
        emb = self(self.prepare(samples.reshape(b * t, s)))
        return emb.float().reshape(b, t, -1)

    def feature_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def metadata(self) -> dict:
        meta = super().metadata()
        meta.update(sample_rate=self.sample_rate)
        return meta
