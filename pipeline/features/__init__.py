"""The feature store and the extraction engine.

Modules (import the one you need; this package imports nothing, so reading features does not
load the encoders or the decoder): ``store`` (the one feature store: HDF5, community
``avadataset`` layout), ``config`` (params sections ``extract``, ``published``), ``engine``
(extraction), ``run`` (the extraction stage's work), ``published`` / ``community`` (import and
export of community files).
"""
