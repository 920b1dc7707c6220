"""tsvae: the Two-Stage VAE (Dai & Wipf, ICLR 2019) in JAX/Flax.

Start at `tsvae.pipeline.run`: setup → stage 1 → latents → stage 2 → sample grids → evaluation.
The commands are `python -m tsvae.main`, `python -m tsvae.evaluate` and `python -m tsvae.sample`.
"""
