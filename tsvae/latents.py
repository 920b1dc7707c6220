"""Stage-1 codes: encoding images to (μ_z, σ_z), and the latent data set stage 2 trains on.

  <workdir>/latents/   (μ_z, σ_z) of every training image, in split order, as a tfds data set
                       (one .npz without TensorFlow; written by process 0 once;
                       `input_pipeline.read_latent_dataset_builder`).

Encoding runs in inference mode (BatchNorm running averages, stored spectral-norm vectors), so
the codes do not depend on the batch size; a large one (config.eval.batch_size) is used for speed.
"""

import functools
import os
from typing import Tuple

from absl import logging
import jax
import numpy as np

from tsvae import batching
from tsvae import experiment
from tsvae import input_pipeline
from tsvae import train

LATENTS_DIR = 'latents'


def latents_dir(workdir: str) -> str:
  return os.path.join(workdir, LATENTS_DIR)


@functools.partial(jax.jit, static_argnames=('model',))
def encode_batch(model, variables, x):
  """(μ, σ) of a batch, inference mode (σ = 0 for the deterministic stage-1 models; for
  ``vae_flow`` those of the Gaussian q(z_0|x) before the flow)."""
  mu, sigma, _ = model.apply(variables, x, train=False, method='encode')
  return mu, sigma


def encode(model, variables, x: np.ndarray, batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
  """(μ, σ) of every row of `x` (model inputs), in order, in padded batches of `batch_size`."""
  return batching.map_padded(lambda chunk: jax.device_get(encode_batch(model, variables, chunk)), x,
                    batch_size)


def encode_split(setup: experiment.Setup, variables1, split: str = 'train'):
  """(μ_z, σ_z) of every example of `split`, in order, inference mode."""
  c = setup.config
  dataset = input_pipeline.make_eval_dataset(setup.builder, split, c.dataset, c.eval.batch_size)
  codes = [encode(setup.model1, variables1, np.asarray(train.image_input(batch, None)),
                  c.eval.batch_size) for batch in input_pipeline.as_numpy(dataset)]
  return np.concatenate([m for m, _ in codes]), np.concatenate([s for _, s in codes])


def exist(workdir: str) -> bool:
  """Whether the latents are stored (CorruptLatents if they were, and are damaged since)."""
  try:
    input_pipeline.read_latent_dataset_builder(latents_dir(workdir))
    return True
  except input_pipeline.CorruptLatents:
    raise  # Complete once, damaged since: an error, never silently encoded again.
  except input_pipeline.DataError:
    return False


def extract(setup: experiment.Setup, variables1):
  """Encodes the training split into <workdir>/latents/, unless it is there already."""
  directory = latents_dir(setup.workdir)
  found = exist(setup.workdir)
  experiment.barrier('latents checked')  # Every process decides before process 0 writes.
  if found:
    logging.info('Latents found in %s; skipping extraction.', directory)
    return
  logging.info('Encoding the training split into %s', directory)
  mu, sigma = encode_split(setup, variables1)
  if jax.process_index() == 0:
    input_pipeline.write_latent_dataset(directory, mu, sigma)
  experiment.barrier('latents written')
  logging.info('Stored %d latent codes (mean σ² %.4f).', len(mu), float(np.mean(sigma**2)))
