"""The FID Inception-v3 in Flax: pool3 (2048-d) features of the TTUR / pytorch-fid network.

This is the network of pytorch-fid's `InceptionV3(output_blocks=[3])` with
`use_fid_inception=True` — the TensorFlow "inception-2015-12-05" graph the TTUR FID code uses,
as ported to PyTorch — with the same weights file
(`pt_inception-2015-12-05-6726825d.pth`, read here without PyTorch by `torch_pickle`):

* input: images in [0, 1] (`input_range=1`) or [0, 255] (`input_range=255`), any size,
  resized to 299x299 exactly as `F.interpolate(mode='bilinear', align_corners=False)` (no
  antialiasing), then mapped to [-1, 1] by 2x - 1;
* torchvision's Inception-v3 stem and Mixed blocks, every conv a bias-free convolution +
  BatchNorm (eps 1e-3, inference statistics) + ReLU, with the FID patches: the average pools
  in the A, C and E blocks exclude the zero padding (`count_include_pad=False`) and the last E
  block (Mixed_7c) max-pools its pool branch;
* output: the global average of Mixed_7c, 2048 features per image. The 1008-way `fc` layer of
  the file is not used.

Module names equal the PyTorch attribute names, so a state-dict key
`Mixed_5b.branch1x1.conv.weight` is the Flax parameter `Mixed_5b/branch1x1/conv/kernel`
(OIHW → HWIO); `bn.weight/bias` → `bn/scale`, `bn/bias`; `bn.running_mean/var` → the
`batch_stats` `bn/mean`, `bn/var`.
"""

import functools
import hashlib
import os
import tempfile
import urllib.request
from typing import Any, Dict, Optional, Tuple

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tsvae.evaluation import torch_pickle

WEIGHTS_FILENAME = 'pt_inception-2015-12-05-6726825d.pth'
WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
               + WEIGHTS_FILENAME)
# sha256 of the file at WEIGHTS_URL (95,628,359 bytes). Its first 8 hex digits are the
# '6726825d' in the file name (the torch.hub convention); the full digest is the one pinned by
# other FID tools that verify this same file.
WEIGHTS_SHA256 = '6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2'
WEIGHTS_BYTES = 95_628_359

INPUT_SIZE = 299
FEATURE_DIM = 2048
_BN_EPS = 1e-3

Pair = Tuple[int, int]


def _pair(v) -> Pair:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
  """Conv (no bias) → BatchNorm (eps 1e-3, inference) → ReLU, as torchvision's BasicConv2d."""
  features: int
  kernel_size: Any = 1
  stride: Any = 1
  padding: Any = 0

  @nn.compact
  def __call__(self, x):
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel_size), strides=_pair(self.stride),
                padding=((ph, ph), (pw, pw)), use_bias=False, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=_BN_EPS, name='bn')(x)
    return nn.relu(x)


def _avg_pool_3x3_same(x):
  """F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3_stride2(x):
  """F.max_pool2d(x, 3, stride=2) (no padding)."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(64, 1, name='branch1x1')(x)
    b5 = BasicConv2d(48, 1, name='branch5x5_1')(x)
    b5 = BasicConv2d(64, 5, padding=2, name='branch5x5_2')(b5)
    b3 = BasicConv2d(64, 1, name='branch3x3dbl_1')(x)
    b3 = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_2')(b3)
    b3 = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_3')(b3)
    bp = BasicConv2d(self.pool_features, 1, name='branch_pool')(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (torchvision's InceptionB, unpatched)."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(384, 3, stride=2, name='branch3x3')(x)
    bd = BasicConv2d(64, 1, name='branch3x3dbl_1')(x)
    bd = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = BasicConv2d(96, 3, stride=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, 1, name='branch1x1')(x)
    b7 = BasicConv2d(c7, 1, name='branch7x7_1')(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = BasicConv2d(c7, 1, name='branch7x7dbl_1')(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = BasicConv2d(192, 1, name='branch_pool')(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (torchvision's InceptionD, unpatched)."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv2d(192, 1, name='branch3x3_1')(x)
    b3 = BasicConv2d(320, 3, stride=2, name='branch3x3_2')(b3)
    b7 = BasicConv2d(192, 1, name='branch7x7x3_1')(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv2d(192, 3, stride=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (`max_pool=False`: FIDInceptionE_1) and Mixed_7c (`max_pool=True`: E_2)."""
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv2d(320, 1, name='branch1x1')(x)
    b3 = BasicConv2d(384, 1, name='branch3x3_1')(x)
    b3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], axis=-1)
    bd = BasicConv2d(448, 1, name='branch3x3dbl_1')(x)
    bd = BasicConv2d(384, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
        BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)], axis=-1)
    if self.max_pool:  # The FID network's Mixed_7c (a quirk of the TF graph).
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3_same(x)
    bp = BasicConv2d(192, 1, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of PyTorch's bilinear resize (align_corners=False, no antialias)."""
  scale = in_size / out_size
  m = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    src = max((i + 0.5) * scale - 0.5, 0.0)
    i0 = min(int(np.floor(src)), in_size - 1)
    i1 = min(i0 + 1, in_size - 1)
    frac = src - i0
    m[i, i0] += 1.0 - frac
    m[i, i1] += frac
  return m.astype(np.float32)


def resize_bilinear(x, size: int = INPUT_SIZE):
  """NHWC images resized like F.interpolate(size=(size, size), mode='bilinear')."""
  _, h, w, _ = x.shape
  if (h, w) == (size, size):
    return x
  mh = jnp.asarray(resize_matrix(h, size))
  mw = jnp.asarray(resize_matrix(w, size))
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum('oh,nhwc->nowc', mh, x, precision=hi)
  return jnp.einsum('pw,nowc->nopc', mw, x, precision=hi)


class FIDInceptionV3(nn.Module):
  """Images [N, H, W, 3] → pool3 features [N, 2048] (inference only)."""
  input_range: float = 1.0  # 1: inputs in [0, 1]; 255: inputs in [0, 255].

  @nn.compact
  def __call__(self, x):
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'expected [N, H, W, 3] images, got shape {x.shape}.')
    x = x / self.input_range
    x = resize_bilinear(x, INPUT_SIZE)
    x = 2.0 * x - 1.0
    x = BasicConv2d(32, 3, stride=2, name='Conv2d_1a_3x3')(x)
    x = BasicConv2d(32, 3, name='Conv2d_2a_3x3')(x)
    x = BasicConv2d(64, 3, padding=1, name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_stride2(x)
    x = BasicConv2d(80, 1, name='Conv2d_3b_1x1')(x)
    x = BasicConv2d(192, 3, name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3_stride2(x)
    x = InceptionA(32, name='Mixed_5b')(x)
    x = InceptionA(64, name='Mixed_5c')(x)
    x = InceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)
    x = InceptionC(128, name='Mixed_6b')(x)
    x = InceptionC(160, name='Mixed_6c')(x)
    x = InceptionC(160, name='Mixed_6d')(x)
    x = InceptionC(192, name='Mixed_6e')(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = InceptionE(max_pool=False, name='Mixed_7b')(x)
    x = InceptionE(max_pool=True, name='Mixed_7c')(x)
    return jnp.mean(x, axis=(1, 2))


# ------------------------------------------------------------------ state dict <-> variables


def variable_shapes() -> Dict[str, Any]:
  """The Flax variables' shapes ({'params': ..., 'batch_stats': ...} of ShapeDtypeStructs)."""
  model = FIDInceptionV3()
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                           jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3))))


def _flatten(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict) or hasattr(v, 'items'):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v


_PARAM_TO_TORCH = {('conv', 'kernel'): 'conv.weight', ('bn', 'scale'): 'bn.weight',
                   ('bn', 'bias'): 'bn.bias'}
_STAT_TO_TORCH = {('bn', 'mean'): 'bn.running_mean', ('bn', 'var'): 'bn.running_var'}


def torch_names() -> Dict[str, Tuple[str, Tuple[str, ...], Tuple[int, ...]]]:
  """{torch key: (collection, flax path, torch shape)} for every tensor the network needs."""
  shapes = variable_shapes()
  out = {}
  for collection, table in (('params', _PARAM_TO_TORCH), ('batch_stats', _STAT_TO_TORCH)):
    for path, leaf in _flatten(shapes[collection]):
      suffix = table[path[-2:]]
      shape = tuple(leaf.shape)
      if path[-1] == 'kernel':
        shape = (shape[3], shape[2], shape[0], shape[1])  # HWIO → OIHW
      out['.'.join(path[:-2] + (suffix,))] = (collection, path, shape)
  return out


def variables_from_state_dict(state_dict: Dict[str, np.ndarray]) -> Dict[str, Any]:
  """Flax variables from a pytorch-fid FID-Inception state dict (NumPy arrays).

  Every conv / BN tensor must be present with its exact shape; `fc.*` and BN
  `num_batches_tracked` are ignored; any other key is an error (a different network).
  """
  names = torch_names()
  missing = [k for k in names if k not in state_dict]
  ignored = [k for k in state_dict
             if k not in names and not (k.startswith('fc.') or k.endswith('num_batches_tracked'))]
  problems = []
  if missing:
    problems.append(f'{len(missing)} missing tensors (e.g. {", ".join(missing[:3])})')
  if ignored:
    problems.append(f'{len(ignored)} unexpected tensors (e.g. {", ".join(ignored[:3])})')
  variables: Dict[str, Dict] = {'params': {}, 'batch_stats': {}}
  for key, (collection, path, shape) in names.items():
    if key not in state_dict:
      continue
    value = np.asarray(state_dict[key], np.float32)
    if value.shape != shape:
      problems.append(f'{key} has shape {value.shape}, expected {shape}')
      continue
    if path[-1] == 'kernel':
      value = value.transpose(2, 3, 1, 0)  # OIHW → HWIO
    node = variables[collection]
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = value
  if problems:
    raise ValueError('Not the FID Inception-v3 state dict: ' + '; '.join(problems) + '.')
  return variables


def state_dict_from_variables(variables: Dict[str, Any]) -> Dict[str, np.ndarray]:
  """The inverse of `variables_from_state_dict` (torch names, OIHW kernels)."""
  out = {}
  for key, (collection, path, _) in torch_names().items():
    node = variables[collection]
    for p in path:
      node = node[p]
    value = np.asarray(node, np.float32)
    if path[-1] == 'kernel':
      value = value.transpose(3, 2, 0, 1)
    out[key] = value
  return out


def load_variables(path: str) -> Dict[str, Any]:
  """Flax variables from a .pth file of the FID Inception weights (no PyTorch needed)."""
  return variables_from_state_dict(torch_pickle.state_dict_arrays(torch_pickle.load(path)))


# --------------------------------------------------------------------------------- weights


def sha256_of(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def find_weights(weights_path: str = '', cache_dir: str = '', allow_download: bool = True,
                 url: str = WEIGHTS_URL, expected_sha256: str = WEIGHTS_SHA256,
                 timeout_s: float = 60.0) -> Tuple[Optional[str], Optional[str]]:
  """(path of verified weights, None), or (None, why they are unavailable).

  `weights_path` given: that file, which must have the expected sha256. Otherwise
  `<cache_dir>/inception/<WEIGHTS_FILENAME>`, downloaded from `url` into the cache first when
  absent and `allow_download`. A download is verified before it is moved into place.
  """
  if weights_path:
    if not os.path.isfile(weights_path):
      return None, f'config.eval.inception_weights={weights_path!r} does not exist.'
    digest = sha256_of(weights_path)
    if digest != expected_sha256:
      return None, (f'{weights_path} has sha256 {digest}, not the FID Inception weights '
                    f'({expected_sha256}).')
    return weights_path, None
  if not cache_dir:
    return None, 'no cache_dir for the Inception weights.'
  path = os.path.join(cache_dir, 'inception', WEIGHTS_FILENAME)
  if os.path.isfile(path):
    digest = sha256_of(path)
    if digest == expected_sha256:
      return path, None
    logging.warning('%s has sha256 %s, expected %s; fetching it again.', path, digest,
                    expected_sha256)
  if not allow_download:
    return None, (f'the Inception weights {WEIGHTS_FILENAME} are not in {os.path.dirname(path)} '
                  'and downloading is disabled (config.eval.allow_download=False); set '
                  'config.eval.inception_weights to a local copy.')
  try:
    _download(url, path, expected_sha256, timeout_s)
  except Exception as e:  # pylint: disable=broad-except
    return None, (f'could not download the Inception weights from {url} '
                  f'({type(e).__name__}: {e}); offline, set config.eval.inception_weights to '
                  f'a local copy of {WEIGHTS_FILENAME} (sha256 {expected_sha256}).')
  return path, None


def _download(url: str, path: str, expected_sha256: str, timeout_s: float):
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.download-')
  try:
    h = hashlib.sha256()
    logging.info('Downloading %s', url)
    with urllib.request.urlopen(url, timeout=timeout_s) as response, os.fdopen(fd, 'wb') as f:
      for chunk in iter(lambda: response.read(1 << 20), b''):
        h.update(chunk)
        f.write(chunk)
      f.flush()
      os.fsync(f.fileno())
    if h.hexdigest() != expected_sha256:
      raise ValueError(f'the download has sha256 {h.hexdigest()}, expected {expected_sha256}')
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


# ------------------------------------------------------------------------------- features


@functools.partial(jax.jit, static_argnames=('model',))
def _features(model, variables, x):
  return model.apply(variables, x)


class FeatureExtractor:
  """pool3 features of image arrays, in fixed-size (padded) batches: one compilation."""

  def __init__(self, variables: Dict[str, Any], batch_size: int = 50,
               input_range: float = 1.0):
    self.variables = jax.tree_util.tree_map(jnp.asarray, variables)
    self.model = FIDInceptionV3(input_range=input_range)
    self.batch_size = int(batch_size)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """float [N, H, W, C] (C = 1 is repeated to 3 channels) → float32 [N, 2048]."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f'expected [N, H, W, 1 or 3] images, got shape {images.shape}.')
    if images.shape[-1] == 1:
      images = np.repeat(images, 3, axis=-1)
    out = []
    b = self.batch_size
    for start in range(0, len(images), b):
      chunk = images[start:start + b]
      n = len(chunk)
      if n < b:
        chunk = np.concatenate([chunk, np.zeros((b - n,) + chunk.shape[1:], chunk.dtype)])
      out.append(np.asarray(_features(self.model, self.variables, chunk))[:n])
    if not out:
      return np.zeros((0, FEATURE_DIM), np.float32)
    return np.concatenate(out)

  @property
  def name(self) -> str:
    return 'fid_inception_v3_pool3'


def feature_extractor(weights_path: str, batch_size: int = 50) -> FeatureExtractor:
  return FeatureExtractor(load_variables(weights_path), batch_size=batch_size)


def random_variables(seed: int = 0) -> Dict[str, Any]:
  """He-initialised random weights with unit BN statistics (for tests without the file)."""
  rng = np.random.default_rng(seed)
  shapes = variable_shapes()
  out: Dict[str, Dict] = {}
  for collection in ('params', 'batch_stats'):
    for path, leaf in _flatten(shapes[collection]):
      shape = tuple(leaf.shape)
      if path[-1] == 'kernel':
        fan_in = int(np.prod(shape[:3]))
        value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
      elif path[-1] == 'scale':
        value = rng.uniform(0.8, 1.2, shape)
      elif path[-1] == 'bias':
        value = rng.normal(0.0, 0.1, shape)
      elif path[-1] == 'mean':
        value = rng.normal(0.0, 0.1, shape)
      else:  # var
        value = rng.uniform(0.5, 1.5, shape)
      node = out.setdefault(collection, {})
      for p in path[:-1]:
        node = node.setdefault(p, {})
      node[path[-1]] = value.astype(np.float32)
  return out

