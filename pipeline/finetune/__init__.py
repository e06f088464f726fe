"""CACE contrastive encoder fine-tuning (paper Sec. 3.4): ``config`` (params section
``finetune``), ``data`` (clips via pipeline.media), ``model`` (encoders + projection heads),
``loss`` (symmetric InfoNCE over the global batch, retrieval top-1), ``train`` (DDP loop,
sampler, gradient caching, checkpoints), ``run`` (the stage's work)."""
