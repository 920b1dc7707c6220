"""Building blocks shared by the tsvae networks.

Reference: daib13/TwoStageVAE, ``network/util.py`` (TF1). Everything here is a pure
function or a ``flax.linen`` module; mutable state (BatchNorm moving averages, the
spectral-norm power-iteration vector) lives in the ``batch_stats`` collection.

Contents
- ``conv_transpose``: ``tf.nn.conv2d_transpose`` semantics with a custom VJP whose
  kernel gradient is the ordinary weight gradient of a strided convolution (XLA:CPU is
  ~6x slower at the autodiff kernel gradient of a stride-2 transposed conv).
- ``ConvTranspose``: module around it (reference ``deconv2d`` / ``tf.layers.conv2d_transpose``).
- ``matmul``, ``Dense``: ``x @ W`` / ``nn.Dense`` with the kernel gradient formed as [in, out]
  (cheaper for its consumers under a data-parallel mesh).
- ``spectral_normalize``, ``SNConv``, ``SNDense``: spectral normalisation exactly as the
  reference ``spectral_norm`` (reference ``conv2d(use_sn=True)`` / ``linear(use_sn=True)``);
  ``spectral_sigma`` is the same sigma without forming W^T (the layers' default fast path,
  which divides the layer output instead of a large kernel).
- ``batch_norm``, ``ZeroDebiasBatchNorm``: reference ``batch_norm`` (decay 0.999, eps 1e-5,
  optionally bias-corrected moving averages as TF1's ``zero_debias``).

Compute dtype: every layer with a matmul or convolution has a ``dtype`` field (float32, the
default, or bfloat16). Parameters are float32 either way; with bfloat16 the product's operands
are cast to bfloat16 (matmuls accumulate and return float32; convolutions return bfloat16) and
the result is cast to float32 before the bias, so everything between the products (biases,
BatchNorm and its statistics, activations, the spectral-norm power iteration) is float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Callable

import flax.linen as nn
from flax.linen import normalization as _bn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
Initializer = Callable[..., Array]

_DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')

# Initialisers of the reference code.
#: ``tf.truncated_normal_initializer(stddev=0.02)`` (TF1: truncated at 2 std, no rescaling).
conv_init_infogan = nn.initializers.truncated_normal(stddev=0.02)
#: ``tf.random_normal_initializer(stddev=0.02)`` (reference ``linear`` and ``deconv2d``).
normal_init_infogan = nn.initializers.normal(stddev=0.02)
#: ``tf.layers`` default kernel initialiser (glorot uniform, fan_avg; symmetric in in/out).
glorot_uniform = nn.initializers.glorot_uniform()
zeros_init = nn.initializers.zeros


def _float32_result(x: Array) -> jnp.dtype | None:
  """``preferred_element_type`` of a product of operands like ``x``: float32 accumulation and
  result for a lower precision, None (the default, i.e. float32) for float32 operands."""
  return None if x.dtype == jnp.float32 else jnp.float32


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(v, int):
    return (v, v)
  v = tuple(int(a) for a in v)
  if len(v) != 2:
    raise ValueError(f'expected an int or a pair, got {v!r}')
  return v


# --------------------------------------------------------------------------------------
# Transposed convolution
# --------------------------------------------------------------------------------------


def _conv(y: Array, kernel: Array, strides: tuple[int, int], padding: str) -> Array:
  """Ordinary NHWC convolution, ``kernel`` viewed as HWIO (``tf.nn.conv2d``)."""
  return lax.conv_general_dilated(
      y, kernel, window_strides=strides, padding=padding,
      dimension_numbers=_DIMENSION_NUMBERS)


def _explicit_pads(in_hw, kernel_hw, strides, padding) -> list[tuple[int, int]]:
  return [tuple(p) for p in lax.padtype_to_pads(tuple(in_hw), tuple(kernel_hw), strides,
                                                 padding)]


# Every convolution of the fast paths below is "canonical" for XLA:CPU: NHWC input, HWIO kernel,
# NHWC output, with any transposes explicit. Autodiff of a convolution produces kernel
# gradients (feature and batch dimensions swapped) and input gradients (kernel in/out swapped)
# in other dimension orders; XLA:CPU rewrites those into the canonical form only in a program's
# entry computation, not inside a loop body, and runs a non-canonical convolution with a generic
# loop nest instead of its Eigen kernels. Inside `lax.scan` (steps_per_call > 1) that made the
# InfoGAN step ~4x slower here (docs/design.md, "Scanned steps").


def _conv_input_grad(g: Array, kernel: Array, strides: tuple[int, int],
                     pads: Sequence[tuple[int, int]], in_hw: Sequence[int]) -> Array:
  """The adjoint of ``conv(., kernel)`` w.r.t. its input [B, *in_hw, I], applied to g, as one
  canonical convolution: g dilated by the strides, the kernel flipped with in/out swapped."""
  flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))
  padding = []
  for n, k, s, (lo, _), m in zip(in_hw, kernel.shape[:2], strides, pads, g.shape[1:3]):
    before = k - lo - 1
    padding.append((before, n + k - 1 - ((m - 1) * s + 1) - before))
  return lax.conv_general_dilated(g, flipped, window_strides=(1, 1), padding=padding,
                                  lhs_dilation=strides, dimension_numbers=_DIMENSION_NUMBERS)


def _conv_kernel_grad(x: Array, g: Array, strides: tuple[int, int],
                      pads: Sequence[tuple[int, int]], kernel_hw: Sequence[int]) -> Array:
  """The gradient w.r.t. the HWIO kernel of ``conv(x, kernel)`` with cotangent g, as one
  canonical convolution: x's channels as the batch, g as a stride-dilated kernel."""
  padding = [(lo, (m - 1) * s + k - n - lo)
             for n, k, s, (lo, _), m in zip(x.shape[1:3], kernel_hw, strides, pads, g.shape[1:3])]
  out = lax.conv_general_dilated(
      jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)), window_strides=(1, 1),
      padding=padding, rhs_dilation=strides, dimension_numbers=_DIMENSION_NUMBERS)
  return jnp.transpose(out, (1, 2, 0, 3))  # [I, kh, kw, O] → HWIO.


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: Array, kernel: Array, strides: tuple[int, int], padding: str) -> Array:
  """``_conv`` (``tf.nn.conv2d``) whose gradients are canonical convolutions (see above)."""
  return _conv(x, kernel, strides, padding)


def _conv2d_fwd(x, kernel, strides, padding):
  return _conv(x, kernel, strides, padding), (x, kernel)


def _conv2d_bwd(strides, padding, res, g):
  x, kernel = res
  pads = _explicit_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
  dx = _conv_input_grad(g, kernel, strides, pads, x.shape[1:3])
  dkernel = _conv_kernel_grad(x, g, strides, pads, kernel.shape[:2])
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _transposed_output_size(size: int, k: int, s: int, padding: str) -> int:
  """Spatial output size of ``tf.layers.conv2d_transpose`` (``deconv_output_length``)."""
  if padding == 'SAME':
    return size * s
  if padding == 'VALID':
    return size * s + max(k - s, 0)
  raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")


def _check_conv_transpose_args(x: Array, kernel: Array, strides, padding: str):
  if x.ndim != 4 or kernel.ndim != 4:
    raise ValueError(
        f'conv_transpose expects x [B,H,W,C] and kernel [kh,kw,out,in], got '
        f'{x.shape} and {kernel.shape}')
  if kernel.shape[3] != x.shape[3]:
    raise ValueError(
        f'kernel {kernel.shape} (layout kh,kw,out,in) does not match input channels '
        f'{x.shape[3]}')
  strides = _pair(strides)
  if padding not in ('SAME', 'VALID'):
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
  out_hw = tuple(
      _transposed_output_size(x.shape[1 + i], kernel.shape[i], strides[i], padding)
      for i in range(2))
  out_shape = (x.shape[0], out_hw[0], out_hw[1], kernel.shape[2])
  return strides, out_shape


def _transpose_of_conv(x: Array, kernel: Array, strides: tuple[int, int], padding: str,
                       out_shape: tuple[int, ...]) -> Array:
  """Adjoint (w.r.t. its input) of ``_conv(., kernel)`` applied to ``x``.

  This is precisely what ``tf.nn.conv2d_transpose`` computes. Plain JAX: autodiff
  through it w.r.t. ``kernel`` goes through the lhs-dilated convolution (slow on CPU).
  """
  dtype = jnp.result_type(x, kernel)
  transpose = jax.linear_transpose(lambda y: _conv(y, kernel, strides, padding),
                                   jax.ShapeDtypeStruct(out_shape, dtype))
  (out,) = transpose(x.astype(dtype))
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_transpose_fast(x, kernel, strides, padding, out_shape):
  return _canonical_transpose_of_conv(x, kernel, strides, padding, out_shape)


def _canonical_transpose_of_conv(x, kernel, strides, padding, out_shape):
  """`_transpose_of_conv` as one canonical convolution (`_conv_input_grad`)."""
  dtype = jnp.result_type(x, kernel)
  pads = _explicit_pads(out_shape[1:3], kernel.shape[:2], strides, padding)
  return _conv_input_grad(x.astype(dtype), kernel.astype(dtype), strides, pads, out_shape[1:3])


def _conv_transpose_fast_fwd(x, kernel, strides, padding, out_shape):
  out = _canonical_transpose_of_conv(x, kernel, strides, padding, out_shape)
  return out, (x, kernel)


def _conv_transpose_fast_bwd(strides, padding, out_shape, res, g):
  x, kernel = res
  # conv_transpose(x, W) = A_W^T x with A_W y = conv(y, W); hence
  # <g, A_W^T x> = <conv(g, W), x>: the input gradient is the ordinary strided conv of
  # the cotangent, and the kernel gradient is that conv's ordinary weight gradient
  # evaluated at input g with cotangent x (both canonical convolutions).
  dtype = jnp.result_type(g, kernel)
  g, x_cast = g.astype(dtype), x.astype(dtype)
  dx = _conv(g, kernel.astype(dtype), strides, padding)
  pads = _explicit_pads(out_shape[1:3], kernel.shape[:2], strides, padding)
  dkernel = _conv_kernel_grad(g, x_cast, strides, pads, kernel.shape[:2])
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_conv_transpose_fast.defvjp(_conv_transpose_fast_fwd, _conv_transpose_fast_bwd)


def conv_transpose(x: Array, kernel: Array, strides: int | Sequence[int],
                   padding: str = 'SAME') -> Array:
  """``tf.nn.conv2d_transpose`` with a fast custom VJP.

  Args:
    x: input [B, H, W, C_in].
    kernel: [kh, kw, C_out, C_in] (TF layout for transposed convolutions).
    strides: int or (sh, sw).
    padding: 'SAME' (output H*sh x W*sw) or 'VALID' (output H*sh + max(kh-sh, 0), ...).

  Returns:
    [B, H', W', C_out]: the input-gradient of ``conv2d(y, kernel, strides, padding)``
    (kernel read as HWIO with I=C_out, O=C_in) applied to ``x``. The backward pass uses
    only ordinary strided convolutions (see environment-notes, "Speed").
  """
  strides, out_shape = _check_conv_transpose_args(x, kernel, strides, padding)
  return _conv_transpose_fast(x, kernel, strides, padding, out_shape)


def conv_transpose_reference(x: Array, kernel: Array, strides: int | Sequence[int],
                             padding: str = 'SAME') -> Array:
  """Same function as ``conv_transpose`` with plain autodiff (for tests / fallback)."""
  strides, out_shape = _check_conv_transpose_args(x, kernel, strides, padding)
  return _transpose_of_conv(x, kernel, strides, padding, out_shape)


class ConvTranspose(nn.Module):
  """Transposed conv layer: reference ``deconv2d`` / ``tf.layers.conv2d_transpose``.

  The kernel has TF's layout (kh, kw, features, in_features).
  """
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: str = 'SAME'
  use_bias: bool = True
  kernel_init: Initializer = glorot_uniform
  bias_init: Initializer = zeros_init
  fast_vjp: bool = True
  dtype: Any = jnp.float32  # Compute dtype of the transposed convolution (module docstring).

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kh, kw = _pair(self.kernel_size)
    kernel = self.param('kernel', self.kernel_init,
                        (kh, kw, self.features, x.shape[-1]), jnp.float32)
    fn = conv_transpose if self.fast_vjp else conv_transpose_reference
    y = fn(x.astype(self.dtype), kernel.astype(self.dtype), self.strides,
           self.padding).astype(jnp.float32)
    if self.use_bias:
      bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
      y = y + bias
    return y


# --------------------------------------------------------------------------------------
# Dense
# --------------------------------------------------------------------------------------


@jax.custom_vjp
def matmul(x: Array, kernel: Array) -> Array:
  """``x @ kernel`` (x [..., in], kernel [in, out]) whose kernel gradient is formed as [in, out].

  JAX's transpose of ``dot_general`` forms the kernel gradient as ``g^T x`` ([out, in]) and
  then transposes it. On one device XLA folds that transpose into the dot; under a
  data-parallel mesh the gradient all-reduce sits between the two, and on CPU every consumer
  of the gradient (Adam's two moments, the gradient norm) then read the 25 MB InfoGAN fc
  gradients column-wise, several times slower. Same values as ``x @ kernel`` and its
  autodiff (the same products, summed in the same way).

  Operands of a lower precision (bfloat16, the same for both) are multiplied with float32
  accumulation and give a float32 result. The backward products also accumulate in float32;
  the gradients they return take the operands' dtype.
  """
  return _matmul_value(x, kernel)


def _matmul_value(x: Array, kernel: Array) -> Array:
  return jnp.matmul(x, kernel, preferred_element_type=_float32_result(x))


def _matmul_fwd(x, kernel):
  return _matmul_value(x, kernel), (x, kernel)


def _matmul_bwd(res, g):
  x, kernel = res
  g = g.astype(x.dtype)  # The operands' dtype (a no-op for float32).
  wide = _float32_result(x)
  dx = lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())),
                       preferred_element_type=wide)
  x2 = x.reshape(-1, x.shape[-1])
  g2 = g.reshape(-1, g.shape[-1])
  dkernel = lax.dot_general(x2, g2, (((0,), (0,)), ((), ())), preferred_element_type=wide)
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Dense(nn.Module):
  """``flax.linen.Dense`` (same parameters ``kernel`` [in, out], ``bias``) using ``matmul``."""
  features: int
  use_bias: bool = True
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = zeros_init
  dtype: Any = jnp.float32  # Compute dtype of x @ kernel (float32 result either way).

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    y = matmul(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,), jnp.float32)
    return y


# --------------------------------------------------------------------------------------
# Spectral normalisation
# --------------------------------------------------------------------------------------
# Why not ``flax.linen.SpectralNorm``: it persists the power-iteration vector on the
# *output* side of the (-1, out) matrix (shape (1, out)) and starts each step from it,
# while the reference persists u on the *input* side (shape (kh*kw*in, 1)), computes
# v = normalize(W^T u), u' = normalize(W v), sigma = u'^T W v. With one power iteration
# per step the two give different sigma estimates and differently shaped state, so we
# implement the reference algorithm directly (it is a few lines).


def _tf_l2_normalize(x: Array, eps: float) -> Array:
  """``tf.nn.l2_normalize(x, dim=None, epsilon=eps)``: x / sqrt(max(sum x^2, eps))."""
  return x * lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x)), eps))


def spectral_normalize(kernel: Array, u: Array, n_power_iterations: int = 1,
                       eps: float = 1e-12) -> tuple[Array, Array, Array]:
  """Reference ``spectral_norm``: returns (kernel / sigma, new u, sigma).

  ``kernel`` is viewed as W = reshape(kernel, (-1, out)); ``u`` has shape (rows(W), 1).
  u and v are treated as constants for differentiation (stop_gradient), sigma = u^T W v.
  """
  if n_power_iterations < 1:
    raise ValueError('spectral_normalize needs at least one power iteration')
  w = kernel.reshape(-1, kernel.shape[-1])
  for _ in range(n_power_iterations):
    v = _tf_l2_normalize(w.T @ u, eps)
    u = _tf_l2_normalize(w @ v, eps)
  u = lax.stop_gradient(u)
  v = lax.stop_gradient(v)
  sigma = (u.T @ w @ v)[0, 0]
  return (w / sigma).reshape(kernel.shape), u, sigma


def _power_iteration(w: Array, u: Array, n_power_iterations: int,
                     eps: float) -> tuple[Array, Array, Array]:
  """The reference power iteration on W [rows, out], without forming W^T.

  Returns (u_new [rows, 1], v [1, out], wv [rows, 1]) where v = normalize(W^T u) (as a row),
  u_new = normalize(W v) and wv = W v. u_new and v are constants (stop_gradient); wv of the
  last iteration is differentiable in W, so ``sigma = sum(u_new * wv)`` = u_new^T W v has the
  reference value and gradient u_new v^T, while W is read only by two matrix-vector products.
  """
  if n_power_iterations < 1:
    raise ValueError('spectral_normalize needs at least one power iteration')
  u = lax.stop_gradient(u)
  w_const = lax.stop_gradient(w)
  contract_rows = (((0,), (0,)), ((), ()))  # u^T W: [1, out]
  contract_out = (((1,), (1,)), ((), ()))  # W v: [rows, 1]
  for i in range(n_power_iterations):
    v = _tf_l2_normalize(lax.dot_general(u, w_const, contract_rows), eps)
    wv = lax.dot_general(w if i == n_power_iterations - 1 else w_const, v, contract_out)
    u = lax.stop_gradient(_tf_l2_normalize(wv, eps))
  return u, v, wv


def spectral_sigma(kernel: Array, u: Array, n_power_iterations: int = 1,
                   eps: float = 1e-12) -> tuple[Array, Array]:
  """(sigma, new u) of the reference ``spectral_norm``, without forming W^T or W / sigma.

  Same function (to float rounding) and same gradient as ``spectral_normalize``'s sigma:
  u and v are constants, sigma = u^T W v. Used by ``SNConv`` / ``SNDense`` (``fast=True``),
  which then divide either the kernel or the layer output by sigma, whichever is smaller.
  """
  w = kernel.reshape(-1, kernel.shape[-1])
  u_new, _, wv = _power_iteration(w, u, n_power_iterations, eps)
  return jnp.sum(u_new * wv), u_new


def _sn_state(module: nn.Module, kernel: Array) -> Any:
  rows = kernel.size // kernel.shape[-1]
  return module.variable(
      'batch_stats', 'u',
      lambda: jax.random.normal(module.make_rng('params'), (rows, 1), jnp.float32))


def _store_u(module: nn.Module, u_var, u_new: Array, update_stats: bool):
  if update_stats and not module.is_initializing():
    u_var.value = u_new


def _sn_kernel(module: nn.Module, kernel: Array, update_stats: bool,
               n_power_iterations: int, eps: float) -> Array:
  """Normalise ``kernel`` of ``module``; state ``batch_stats/<module>/u`` (N(0,1) init).

  The plain reference formulation (``spectral_normalize``), used with ``fast=False``.
  """
  u_var = _sn_state(module, kernel)
  w_bar, u_new, _ = spectral_normalize(kernel, u_var.value, n_power_iterations, eps)
  _store_u(module, u_var, u_new, update_stats)
  return w_bar


def _sn_sigma(module: nn.Module, kernel: Array, update_stats: bool,
              n_power_iterations: int, eps: float) -> Array:
  """sigma of ``kernel`` of ``module`` (``spectral_sigma``); same state as ``_sn_kernel``."""
  u_var = _sn_state(module, kernel)
  sigma, u_new = spectral_sigma(kernel, u_var.value, n_power_iterations, eps)
  _store_u(module, u_var, u_new, update_stats)
  return sigma


class SNConv(nn.Module):
  """Reference ``conv2d(..., use_sn=True)``: SAME conv with a spectrally normalised kernel.

  ``update_stats`` (= train) stores the new u; the forward always uses the freshly
  iterated u (as the reference does). ``fast`` (default) computes sigma with
  ``spectral_sigma`` (no W^T); ``fast=False`` is the plain ``spectral_normalize`` form.
  Both give the same outputs, gradients and u to float rounding (tests check this).
  """
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  kernel_init: Initializer = conv_init_infogan
  bias_init: Initializer = zeros_init
  n_power_iterations: int = 1
  eps: float = 1e-12
  fast: bool = True
  dtype: Any = jnp.float32  # Compute dtype of the convolution; sigma is float32 either way.

  def _product(self, x: Array, kernel: Array, strides: tuple[int, int]) -> Array:
    return conv2d(x.astype(self.dtype), kernel.astype(self.dtype), strides,
                  'SAME').astype(jnp.float32)

  @nn.compact
  def __call__(self, x: Array, update_stats: bool) -> Array:
    kh, kw = _pair(self.kernel_size)
    kernel = self.param('kernel', self.kernel_init,
                        (kh, kw, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    strides = _pair(self.strides)
    if not self.fast:
      kernel = _sn_kernel(self, kernel, update_stats, self.n_power_iterations, self.eps)
      return self._product(x, kernel, strides) + bias
    sigma = _sn_sigma(self, kernel, update_stats, self.n_power_iterations, self.eps)
    out_size = x.shape[0] * self.features * (x.shape[1] // strides[0]) * (
        x.shape[2] // strides[1])
    if out_size < kernel.size:  # Dividing the (smaller) output is cheaper.
      return self._product(x, kernel, strides) / sigma + bias
    return self._product(x, kernel / sigma, strides) + bias


class SNDense(nn.Module):
  """Reference ``linear(..., use_sn=True)``: dense layer with spectrally normalised kernel.

  With ``fast`` (default) the output x W is divided by sigma when that is smaller than
  the kernel (x (W / sigma) = (x W) / sigma): for the 6272x1024 fc3 kernel this saves
  forming W^T, W / sigma and, in the backward pass, a full reduction over W and a
  rescaled copy of its gradient. ``fast=False`` is the plain reference formulation.
  """
  features: int
  kernel_init: Initializer = normal_init_infogan
  bias_init: Initializer = zeros_init
  n_power_iterations: int = 1
  eps: float = 1e-12
  fast: bool = True
  dtype: Any = jnp.float32  # Compute dtype of x W (float32 result); sigma is float32.

  def _product(self, x: Array, kernel: Array) -> Array:
    return matmul(x.astype(self.dtype), kernel.astype(self.dtype))

  @nn.compact
  def __call__(self, x: Array, update_stats: bool) -> Array:
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param('bias', self.bias_init, (self.features,), jnp.float32)
    if not self.fast:
      kernel = _sn_kernel(self, kernel, update_stats, self.n_power_iterations, self.eps)
      if jnp.dtype(self.dtype) == jnp.float32:
        return x @ kernel + bias  # The reference formulation, autodiff included.
      return self._product(x, kernel) + bias
    sigma = _sn_sigma(self, kernel, update_stats, self.n_power_iterations, self.eps)
    if x.size // x.shape[-1] < kernel.shape[0]:  # batch rows < input features
      return self._product(x, kernel) / sigma + bias
    return self._product(x, kernel / sigma) + bias


# --------------------------------------------------------------------------------------
# BatchNorm and misc
# --------------------------------------------------------------------------------------


class ZeroDebiasBatchNorm(nn.BatchNorm):
  """``nn.BatchNorm`` whose moving averages are bias-corrected as TF1's
  ``assign_moving_average(..., zero_debias=True)`` (the reference's ``batch_norm``).

  TF1 keeps a biased EMA b_t = d·b_{t-1} + (1 − d)·x_t with b_0 = 0 and a step counter t, and
  stores b_t / (1 − d^t) in the moving variable. Here ``batch_stats/mean`` and ``var`` hold
  that debiased value directly (so inference reads them as with ``nn.BatchNorm``) and
  ``batch_stats/local_step`` holds t; the same value follows from the debiased one alone:
  m_t = m_{t-1} + (x_t − m_{t-1})·(1 − d) / (1 − d^t). The first update (weight 1) replaces
  the initial 0 / 1, so they carry no weight. Normalisation is ``nn.BatchNorm``'s.
  """

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    use_running_average = nn.merge_param('use_running_average', self.use_running_average,
                                         use_running_average)
    feature_axes = _bn._canonicalize_axes(x.ndim, self.axis)
    reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
    feature_shape = [x.shape[ax] for ax in feature_axes]
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, feature_shape, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, feature_shape, jnp.float32)
    step = self.variable('batch_stats', 'local_step', jnp.zeros, (), jnp.float32)
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      mean, var = _bn._compute_stats(  # pylint: disable=protected-access
          x, reduction_axes, dtype=self.dtype,
          axis_name=None if self.is_initializing() else self.axis_name,
          axis_index_groups=self.axis_index_groups,
          use_fast_variance=self.use_fast_variance, mask=mask)
      if not self.is_initializing():
        t = step.value + 1.0
        # 1 − d^t as −expm1(t·log d): 1 − float32(0.999)^t would lose ~1e-5 (relative) at t = 1.
        weight = (1.0 - self.momentum) / -jnp.expm1(t * math.log(self.momentum))
        ra_mean.value = ra_mean.value + (mean - ra_mean.value) * weight
        ra_var.value = ra_var.value + (var - ra_var.value) * weight
        step.value = t
    return _bn._normalize(  # pylint: disable=protected-access
        self, x, mean, var, reduction_axes, feature_axes, self.dtype, self.param_dtype,
        self.epsilon, self.use_bias, self.use_scale, self.bias_init, self.scale_init)


def batch_norm(train: bool, name: str | None = None, zero_debias: bool = False) -> nn.BatchNorm:
  """Reference ``batch_norm``: decay 0.999, eps 1e-5, affine, biased batch variance.

  Statistics over all axes but the last. No ``axis_name``: under jit over a device mesh
  the batch statistics are those of the global batch. ``zero_debias``: bias-corrected moving
  averages as the reference's TF1 ``assign_moving_average`` (``ZeroDebiasBatchNorm``); off,
  Flax's plain EMA from mean 0 / var 1 (tsvae before that option, still what old workdirs
  restore).
  """
  cls = ZeroDebiasBatchNorm if zero_debias else nn.BatchNorm
  return cls(use_running_average=not train, momentum=0.999, epsilon=1e-5,
             use_fast_variance=False, name=name)


def lrelu(x: Array, leak: float = 0.2) -> Array:
  """Reference ``lrelu``: max(x, leak*x)."""
  return jnp.maximum(x, leak * x)


def dense(features: int, name: str | None = None, **kw: Any) -> Dense:
  """``tf.layers.dense`` (glorot-uniform kernel, zero bias)."""
  return Dense(features, kernel_init=glorot_uniform, bias_init=zeros_init, name=name, **kw)


def _cast_operands(inputs: Array, kernel: Array, bias: Array | None,
                   dtype: Any = None) -> tuple[Array, Array, Array | None]:
  """``nn.Conv``'s ``promote_dtype`` hook for a lower compute dtype: the convolution's operands
  in ``dtype``, the bias left float32, so that it is added to the product in float32."""
  return inputs.astype(dtype), kernel.astype(dtype), bias


def conv(features: int, kernel_size: int, strides: int = 1,
         name: str | None = None, dtype: Any = jnp.float32) -> nn.Conv:
  """``tf.layers.conv2d(..., padding='same')`` (glorot-uniform kernel, zero bias).

  ``dtype``: compute dtype of the convolution; float32 parameters, bias and result either way.
  """
  low_precision = ({} if jnp.dtype(dtype) == jnp.float32
                   else {'dtype': dtype, 'promote_dtype': _cast_operands})
  return nn.Conv(features, _pair(kernel_size), strides=_pair(strides), padding='SAME',
                 kernel_init=glorot_uniform, bias_init=zeros_init, name=name, **low_precision)
