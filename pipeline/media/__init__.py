"""Decoding (decord, or PyAV where decord has no wheel: ``decode.decoder_name``): probe,
per-segment frame sampling, audio, worker pool with timeout.

Public API (docs/ARCHITECTURE.md "Media"):
``probe``, ``probe_many``, ``VideoInfo``, ``segment_frame_indices``, ``decode_video``,
``decode_audio``, ``Decoded``, ``DecodeFailure``, ``DecodePool``.
"""
from .decode import (FLAG_NO_AUDIO, FLAG_PADDED_AUDIO, FLAG_PADDED_SHORT, FLAG_SHORT_STRETCHED,
                     FLAG_VFR, DecodeFailure, Decoded, VideoInfo, audio_flags, decode_audio,
                     decode_video, read_info)
from .pool import DecodePool, probe, probe_many
from .sampling import RULES, is_variable_rate, sample_times, segment_frame_indices

__all__ = ["audio_flags", "DecodeFailure", "DecodePool", "Decoded", "RULES", "VideoInfo", "decode_audio",
           "decode_video", "is_variable_rate", "probe", "probe_many", "read_info", "sample_times",
           "segment_frame_indices", "FLAG_NO_AUDIO", "FLAG_PADDED_AUDIO", "FLAG_PADDED_SHORT",
           "FLAG_SHORT_STRETCHED", "FLAG_VFR"]
