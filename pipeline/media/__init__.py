"""Decoding (decord, or PyAV where decord has no wheel: ``decode.decoder_name``):
``decode`` (``read_info``, ``decode_video``, ``decode_audio``, ``Decoded``, ``DecodeFailure``, the
flags), ``pool`` (``probe``, ``probe_many``, ``DecodePool``), ``sampling`` (per-segment frame
rules), ``write`` (the synthetic set's mp4 writer).

Import the module you need (docs/ARCHITECTURE.md "Media"); this package imports nothing, so a
stage that writes or samples does not load the decoder.
"""
