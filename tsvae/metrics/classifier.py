"""The proxy metric's feature network: a small CNN classifier per dataset, trained once, cached.

The Fréchet classifier distance ("proxy FD") is the Fréchet distance between the penultimate
features (the ReLU output of the dense layer before the logits) of generated and test images.
Its network is trained on the dataset's labelled training split with a fixed recipe and seed,
then cached, so every experiment on a dataset is measured with the same network:

    <cache_dir>/classifiers/<dataset>_seed<seed>/<key>/params.msgpack, classifier.json

(plus `training.msgpack` and `training.json` while training: a killed training resumes at its
last epoch, and `training.json` says what the unfinished network is).
`<key>` hashes the recipe and a fingerprint of the labelled test split, so a changed recipe,
or other data under the same name (tfds mock data in tests), never reuses a network trained
for something else. `classifier.json` (written last, atomically) records the test accuracy,
the training time and the sha256 of params.msgpack.

Net (per stage of `widths`): [conv 3x3 → BN → ReLU] x convs_per_stage → max-pool 2; flatten → dense
(`dense`) → ReLU = the features → dropout → dense 10. Adam with a cosine learning-rate decay,
batch 128; CIFAR-10 also uses random 4-px-shift crops and horizontal flips.
Datasets without class labels (CelebA) have no classifier: `ClassifierUnavailable`.
"""

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any, Dict, Optional, Sequence, Tuple

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tsvae import batching
from tsvae import fileio
from tsvae import input_pipeline

NUM_CLASSES = 10
_PARAMS_FILE = 'params.msgpack'
_META_FILE = 'classifier.json'
_TRAINING_FILE = 'training.msgpack'  # Per-epoch state of an unfinished training.
_TRAINING_META_FILE = 'training.json'  # Recipe, seed and test fingerprint of that training.
_FORMAT_VERSION = 1


class ClassifierUnavailable(RuntimeError):
  """The dataset has no labels to train the proxy classifier on."""


@dataclasses.dataclass(frozen=True)
class Recipe:
  widths: Tuple[int, ...] = (32, 64)
  convs_per_stage: int = 1
  dense: int = 128
  epochs: int = 3
  batch_size: int = 128
  learning_rate: float = 1e-3
  weight_decay: float = 0.0
  dropout: float = 0.3
  augment: bool = False  # Random 4-px-shift crops + horizontal flips.

  def to_json(self) -> Dict[str, Any]:
    d = dataclasses.asdict(self)
    d['widths'] = list(self.widths)
    return d


# Sized for CPUs: on 2 cores one MNIST epoch of the mnist recipe takes about a minute.
RECIPES = {
    'mnist': Recipe(widths=(32, 64), convs_per_stage=1, dense=128, epochs=4),
    'fashion_mnist': Recipe(widths=(32, 64), convs_per_stage=2, dense=256, epochs=6,
                            dropout=0.4),
    'cifar10': Recipe(widths=(32, 64, 128), convs_per_stage=2, dense=256, epochs=30,
                      augment=True, weight_decay=5e-4, dropout=0.3),
}


def recipe_for(dataset: str, epochs: int = -1) -> Recipe:
  """The dataset's recipe; `epochs` > 0 overrides its epoch count."""
  input_pipeline.check_dataset(dataset)
  if dataset not in RECIPES:
    raise ClassifierUnavailable(
        f'{dataset} has no class labels in its tfds builder, so there is no proxy classifier '
        'for it.')
  recipe = RECIPES[dataset]
  if epochs and epochs > 0:
    recipe = dataclasses.replace(recipe, epochs=int(epochs))
  return recipe


class CNN(nn.Module):
  widths: Sequence[int]
  convs_per_stage: int
  dense: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Returns (logits [B, 10], features [B, dense])."""
    for i, w in enumerate(self.widths):
      for j in range(self.convs_per_stage):
        x = nn.Conv(w, (3, 3), padding='SAME', use_bias=False, name=f'conv{i}_{j}')(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f'bn{i}_{j}')(x)
        x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    features = nn.relu(nn.Dense(self.dense, name='features')(x))
    h = nn.Dropout(self.dropout, deterministic=not train)(features)
    logits = nn.Dense(NUM_CLASSES, name='logits')(h)
    return logits, features


# ----------------------------------------------------------------------------- data


def load_labeled(builder, split: str, dataset: str) -> Tuple[np.ndarray, np.ndarray]:
  """(uint8 images [N, H, W, C] preprocessed as the model sees them, int32 labels [N])."""
  info = getattr(builder, 'info', None)
  if info is not None and 'label' not in info.features:
    raise ClassifierUnavailable(f'{dataset} ({builder.name}) has no "label" feature.')
  images, labels = input_pipeline.labeled_images(builder, split, dataset)
  return images, labels.astype(np.int32)


def data_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
  h = hashlib.sha256()
  h.update(str(images.shape).encode())
  h.update(np.ascontiguousarray(images).tobytes())
  h.update(np.ascontiguousarray(labels, np.int64).tobytes())
  return h.hexdigest()


# ---------------------------------------------------------------------------- training


def _augment(rng, x):
  """Random shifts of up to 4 px (zero padding) and horizontal flips, per image."""
  b, h, w, _ = x.shape
  r_shift, r_flip = jax.random.split(rng)
  padded = jnp.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
  offsets = jax.random.randint(r_shift, (b, 2), 0, 9)
  crop = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0),
                                                       (h, w, img.shape[-1])))
  x = crop(padded, offsets)
  flip = jax.random.bernoulli(r_flip, 0.5, (b, 1, 1, 1))
  return jnp.where(flip, x[:, :, ::-1, :], x)


def _make_step(model: CNN, tx, augment: bool):
  @jax.jit
  def step(params, batch_stats, opt_state, images, labels, rng):
    x = images.astype(jnp.float32) / 255.0
    aug_rng, drop_rng = jax.random.split(rng)
    if augment:
      x = _augment(aug_rng, x)

    def loss_fn(p):
      (logits, _), updates = model.apply(
          {'params': p, 'batch_stats': batch_stats}, x, train=True,
          rngs={'dropout': drop_rng}, mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, (updates['batch_stats'], jnp.mean(jnp.argmax(logits, -1) == labels))

    (loss, (new_stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss, acc

  return step


@functools.partial(jax.jit, static_argnames=('model',))
def _apply(model, variables, images):
  logits, features = model.apply(variables, images.astype(jnp.float32), train=False)
  return logits, features


def train(images: np.ndarray, labels: np.ndarray, recipe: Recipe, seed: int,
          log_every_epochs: int = 1, checkpoint_path: Optional[str] = None) -> Dict[str, Any]:
  """Trains the CNN on uint8 images; returns its variables {'params', 'batch_stats'}.

  With `checkpoint_path`, the training state is written there (atomically) after every epoch
  and a later call resumes from it, with the same result as an uninterrupted run.
  """
  model = CNN(tuple(recipe.widths), recipe.convs_per_stage, recipe.dense, recipe.dropout)
  n = len(images)
  batch = min(recipe.batch_size, n)
  steps_per_epoch = max(1, n // batch)
  total = steps_per_epoch * recipe.epochs
  schedule = optax.cosine_decay_schedule(recipe.learning_rate, total)
  if recipe.weight_decay:
    tx = optax.adamw(schedule, weight_decay=recipe.weight_decay)
  else:
    tx = optax.adam(schedule)
  rng = jax.random.PRNGKey(seed)
  init_rng, rng = jax.random.split(rng)
  variables = model.init({'params': init_rng}, jnp.zeros((1,) + images.shape[1:]), train=False)
  state = {'params': variables['params'], 'batch_stats': variables['batch_stats'],
           'opt_state': tx.init(variables['params']), 'epoch': 0}
  if checkpoint_path and os.path.exists(checkpoint_path):
    with open(checkpoint_path, 'rb') as f:
      state = flax.serialization.from_bytes(state, f.read())
    logging.info('Resuming the proxy classifier at epoch %d from %s', int(state['epoch']),
                 checkpoint_path)
  params, batch_stats, opt_state = state['params'], state['batch_stats'], state['opt_state']
  first_epoch = int(state['epoch'])
  step = _make_step(model, tx, recipe.augment)
  order_rng = np.random.default_rng(seed)
  for _ in range(first_epoch):  # The data orders of the epochs already done.
    order_rng.permutation(n)
  for epoch in range(first_epoch, recipe.epochs):
    order = order_rng.permutation(n)
    losses, accs = [], []
    start = time.time()
    for i in range(steps_per_epoch):
      idx = np.sort(order[i * batch:(i + 1) * batch])
      params, batch_stats, opt_state, loss, acc = step(
          params, batch_stats, opt_state, images[idx], labels[idx],
          jax.random.fold_in(rng, epoch * steps_per_epoch + i))
      losses.append(loss)
      accs.append(acc)
    if log_every_epochs and (epoch + 1) % log_every_epochs == 0:
      logging.info('proxy classifier epoch %d/%d: loss %.4f, train accuracy %.4f (%.0f s)',
                   epoch + 1, recipe.epochs, float(np.mean(jax.device_get(losses))),
                   float(np.mean(jax.device_get(accs))), time.time() - start)
    if checkpoint_path and epoch + 1 < recipe.epochs:
      fileio.atomic_write_bytes(checkpoint_path, flax.serialization.to_bytes(
          {'params': params, 'batch_stats': batch_stats, 'opt_state': opt_state,
           'epoch': epoch + 1}))
  return {'params': params, 'batch_stats': batch_stats}


# ---------------------------------------------------------------------------- the classifier


class Classifier:
  """A trained proxy classifier: `features(images)` and `accuracy(images, labels)`."""

  def __init__(self, dataset: str, recipe: Recipe, variables: Dict[str, Any],
               meta: Dict[str, Any], batch_size: int = 500):
    self.dataset = dataset
    self.recipe = recipe
    self.model = CNN(tuple(recipe.widths), recipe.convs_per_stage, recipe.dense, 0.0)
    self.variables = jax.tree_util.tree_map(jnp.asarray, variables)
    self.meta = meta
    self.batch_size = int(batch_size)

  @property
  def test_accuracy(self) -> float:
    return float(self.meta['test_accuracy'])

  @property
  def cache_key(self) -> str:
    return self.meta['cache_key']

  @property
  def name(self) -> str:
    return f'proxy_cnn_{self.cache_key}'

  def _run(self, images: np.ndarray):
    """(logits, features) of images: uint8 [0, 255] or float [0, 1], native channels."""
    images = np.asarray(images)
    x = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else (
        images.astype(np.float32))
    if not len(x):
      return np.zeros((0, NUM_CLASSES), np.float32), np.zeros((0, self.recipe.dense), np.float32)
    return batching.map_padded(
        lambda chunk: jax.device_get(_apply(self.model, self.variables, chunk)), x,
        self.batch_size)

  def features(self, images: np.ndarray) -> np.ndarray:
    """Penultimate features [N, dense] of images (uint8, or float in [0, 1])."""
    return self._run(images)[1]

  def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
    logits, _ = self._run(images)
    return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))


def _cache_key(recipe: Recipe, seed: int, test_fingerprint: str) -> str:
  blob = json.dumps({'recipe': recipe.to_json(), 'seed': seed, 'test': test_fingerprint,
                     'format': _FORMAT_VERSION}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_dir_for(cache_dir: str, dataset: str, seed: int, key: str) -> str:
  return os.path.join(cache_dir, 'classifiers', f'{dataset}_seed{seed}', key)


def _try_load(directory: str, dataset: str, recipe: Recipe,
              batch_size: int) -> Optional[Classifier]:
  meta = fileio.read_json(os.path.join(directory, _META_FILE))
  if meta is None:
    return None
  path = os.path.join(directory, _PARAMS_FILE)
  try:
    with open(path, 'rb') as f:
      blob = f.read()
  except OSError:
    return None
  if hashlib.sha256(blob).hexdigest() != meta.get('params_sha256'):
    logging.warning('%s does not match its %s; training the classifier again.', path,
                    _META_FILE)
    return None
  variables = flax.serialization.msgpack_restore(blob)
  return Classifier(dataset, recipe, variables, meta, batch_size)


def _json_diff(wanted: Dict[str, Any], other: Dict[str, Any]) -> str:
  keys = sorted(set(wanted) | set(other))
  return ', '.join(f'{k} {other.get(k)!r} (wanted {wanted.get(k)!r})' for k in keys
                   if wanted.get(k) != other.get(k))


def other_cached(cache_dir: str, dataset: str, seed: int, key: str, recipe: Recipe,
                 test_fingerprint: str) -> Sequence[str]:
  """Why each other cache entry of `dataset`/`seed` is not the wanted `key`, one line each.

  A cache miss retrains for tens of minutes, so the log says what the entries that were there
  differ in (a recipe override such as `epochs`, other test data, an unfinished training).
  """
  parent = os.path.dirname(cache_dir_for(cache_dir, dataset, seed, key))
  if not fileio.exists(parent):
    return []
  wanted_recipe = recipe.to_json()
  lines = []
  for name in sorted(fileio.listdir(parent)):
    if name == key:
      continue
    meta = (fileio.read_json(os.path.join(parent, name, _META_FILE)) or
            fileio.read_json(os.path.join(parent, name, _TRAINING_META_FILE)))
    if meta is None:
      lines.append(f'{name}: no {_META_FILE} or {_TRAINING_META_FILE}')
      continue
    state = 'trained' if 'test_accuracy' in meta else 'unfinished'
    why = []
    if meta.get('recipe') != wanted_recipe:
      why.append('recipe: ' + _json_diff(wanted_recipe, meta.get('recipe') or {}))
    if meta.get('test_fingerprint_sha256') != test_fingerprint:
      why.append('other test data (fingerprint '
                 f'{str(meta.get("test_fingerprint_sha256"))[:12]}, wanted '
                 f'{test_fingerprint[:12]})')
    if meta.get('format_version') != _FORMAT_VERSION:
      why.append(f'format {meta.get("format_version")} (wanted {_FORMAT_VERSION})')
    lines.append(f'{name} ({state}): ' + ('; '.join(why) or 'same inputs, other key'))
  return lines


def get_classifier(builder, dataset: str, *, cache_dir: str, seed: int = 0, epochs: int = -1,
                   batch_size: int = 500, write: bool = True,
                   test_data: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Classifier:
  """The cached proxy classifier of `dataset`, trained (and cached) first if needed.

  Args:
    builder: the dataset's tfds builder (its 'train' and 'test' splits, with labels).
    cache_dir: the shared cache root (see module doc for the layout).
    seed: the classifier's own seed (init, data order, dropout); part of the cache key.
    epochs: > 0 overrides the recipe's epoch count (part of the cache key).
    write: whether this process writes the cache (process 0 only in multi-process runs).
    test_data: the labelled test split if already loaded.

  Raises:
    ClassifierUnavailable: the dataset has no class labels.
  """
  recipe = recipe_for(dataset, epochs)
  test_images, test_labels = test_data or load_labeled(builder, 'test', dataset)
  fingerprint = data_fingerprint(test_images, test_labels)
  key = _cache_key(recipe, seed, fingerprint)
  directory = cache_dir_for(cache_dir, dataset, seed, key)
  cached = _try_load(directory, dataset, recipe, batch_size)
  if cached is not None:
    logging.info('Proxy classifier from %s (test accuracy %.4f).', directory,
                 cached.test_accuracy)
    return cached
  logging.info('Training the %s proxy classifier (%d epochs); it is cached in %s.', dataset,
               recipe.epochs, directory)
  for line in other_cached(cache_dir, dataset, seed, key, recipe, fingerprint):
    logging.info('  not used, cached beside it: %s', line)
  train_images, train_labels = load_labeled(builder, 'train', dataset)
  start = time.time()
  checkpoint = os.path.join(directory, _TRAINING_FILE) if write else None
  training_meta = os.path.join(directory, _TRAINING_META_FILE)
  started = (fileio.read_json(training_meta) or {}).get('started')
  resumed_at_epoch = 0
  if checkpoint and os.path.exists(checkpoint):
    with open(checkpoint, 'rb') as f:
      resumed_at_epoch = int(flax.serialization.msgpack_restore(f.read())['epoch'])
  if write and started is None:
    started = time.strftime('%Y-%m-%dT%H:%M:%S%z')
    fileio.atomic_write_json(training_meta, {
        'format_version': _FORMAT_VERSION, 'dataset': dataset, 'seed': int(seed),
        'recipe': recipe.to_json(), 'test_fingerprint_sha256': fingerprint,
        'started': started})
  variables = jax.device_get(train(train_images, train_labels, recipe, seed,
                                   checkpoint_path=checkpoint))
  train_time = time.time() - start
  meta = {
      'format_version': _FORMAT_VERSION,
      'dataset': dataset,
      'seed': int(seed),
      'recipe': recipe.to_json(),
      'cache_key': f'{dataset}_seed{seed}/{key}',
      'test_fingerprint_sha256': fingerprint,
      'num_train': int(len(train_images)),
      'num_test': int(len(test_images)),
      'train_time_s': round(train_time, 1),  # This call's; see resumed_at_epoch.
      'resumed_at_epoch': resumed_at_epoch,
      'training_started': started,
      'jax_version': jax.__version__,
      'backend': jax.default_backend(),
      'created': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
  }
  classifier = Classifier(dataset, recipe, variables, meta, batch_size)
  meta['test_accuracy'] = classifier.accuracy(test_images, test_labels)
  meta['train_accuracy'] = classifier.accuracy(train_images, train_labels)
  logging.info('Proxy classifier for %s: test accuracy %.4f after %.0f s of training.', dataset,
               meta['test_accuracy'], train_time)
  if write:
    blob = flax.serialization.msgpack_serialize(
        jax.tree_util.tree_map(np.asarray, variables))
    meta['params_sha256'] = hashlib.sha256(blob).hexdigest()
    fileio.atomic_write_bytes(os.path.join(directory, _PARAMS_FILE), blob)
    fileio.atomic_write_json(os.path.join(directory, _META_FILE), meta)
    for leftover in (checkpoint, training_meta):
      fileio.remove(leftover)
  return classifier
