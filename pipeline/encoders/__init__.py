"""Backbones and the one weights resolver.

Modules (import the one you need; this package stays light): ``base`` (the :class:`Encoder`
interface and the registry: ``build_encoder(spec)`` turns an ``extract.models.<name>`` entry
into an encoder), ``spec`` (:class:`ModelSpec`, no torch), ``weights`` (the one weights
resolver), ``visual`` / ``audio`` / ``vggish`` / ``cnn14`` (the encoders). The registry fills
itself on first use (:func:`pipeline.encoders.base.discover`): every public module in this folder
is imported (each registers its encoders with ``@register_encoder``), then the entry points of
the group ``ave_pipeline.encoders`` of other installed packages are loaded. A new encoder is one
new module here and one ``extract.models`` entry.
"""
