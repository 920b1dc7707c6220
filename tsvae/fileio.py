"""Workdir file I/O for local paths and remote file systems (gs://, ...), crash-safe.

Every read and write of a workdir outside Orbax goes through this module (Orbax handles local and
gs:// checkpoint directories itself). Paths are plain strings:

* a URL with a scheme (`gs://bucket/run`, `s3://...`, or `ram://...`, TensorFlow's in-memory file
  system that the tests use) is *remote* and goes through `tf.io.gfile`, TensorFlow's file-system
  layer (GCS is built into TensorFlow; the package already depends on it for tf.data / tfds);
* anything else (and `file://...`) is a *local* path and goes through `os`.

Whatever is read back was written completely (`atomic_write_bytes`):

* local: the data goes to a temporary sibling file, is fsync'ed, and `os.replace` moves it into
  place (atomic on POSIX file systems), so a process killed mid-write leaves the old file or none.
* remote: the data goes to a temporary sibling object, then `gfile.rename` moves it into place.
  On GCS (and other object stores) an object becomes visible only once its upload has completed
  (TensorFlow uploads a written file in one request when it is closed), and the rename is a
  server-side copy that creates the destination object whole, then deletes the temporary one;
  so a reader sees the old object or the new one, never part of one. A process killed between
  the two steps leaves at most a stray `.tmp-*` object, never a partial destination. The same
  two steps are atomic on file systems with a real rename (HDFS), and they are the code path
  the `ram://` tests exercise.

Remote errors (`tf.errors.OpError`) are raised as `OSError` (`FileNotFoundError`,
`PermissionError`, ...), so callers catch one exception type for both kinds of path.
"""

import contextlib
import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from typing import Any, Dict, Iterable, List, Optional

_SCHEME = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*)://')


def is_remote(path: str) -> bool:
  """True for a URL with a scheme other than file:// (gs://bucket/run, ram://x, ...)."""
  match = _SCHEME.match(os.fspath(path))
  return bool(match) and match.group(1).lower() != 'file'


def _local(path: str) -> str:
  path = os.fspath(path)
  return path[len('file://'):] if path.lower().startswith('file://') else path


def abspath(path: str) -> str:
  """os.path.abspath for a local path; a remote URL unchanged."""
  return os.fspath(path) if is_remote(path) else os.path.abspath(_local(path))


def _tf():
  """TensorFlow (slow import; remote paths only); TensorFlowRequired naming the extra."""
  from tsvae.datasets import tf_optional  # pylint: disable=g-import-not-at-top
  return tf_optional.require('Remote (gs://) paths (tf.io.gfile)')


def _gfile():
  return _tf().io.gfile


@contextlib.contextmanager
def _remote_errors(path: str):
  """Re-raises TensorFlow file-system errors as the matching OSError."""
  tf = _tf()
  try:
    yield
  except tf.errors.NotFoundError as e:
    raise FileNotFoundError(f'{path}: {e.message}') from e
  except tf.errors.PermissionDeniedError as e:
    raise PermissionError(f'{path}: {e.message}') from e
  except tf.errors.AlreadyExistsError as e:
    raise FileExistsError(f'{path}: {e.message}') from e
  except tf.errors.OpError as e:
    raise OSError(f'{path}: {type(e).__name__}: {e.message}') from e


def exists(path: str) -> bool:
  if not is_remote(path):
    return os.path.exists(_local(path))
  with _remote_errors(path):
    return _gfile().exists(path)


def isdir(path: str) -> bool:
  if not is_remote(path):
    return os.path.isdir(_local(path))
  with _remote_errors(path):
    return _gfile().isdir(path)


def makedirs(path: str):
  """Creates `path` and its parents (no error if it exists)."""
  if not is_remote(path):
    os.makedirs(_local(path), exist_ok=True)
    return
  with _remote_errors(path):
    _gfile().makedirs(path)


def listdir(path: str) -> List[str]:
  """Names in directory `path` (sub-directories without a trailing slash), sorted."""
  if not is_remote(path):
    return sorted(os.listdir(_local(path)))
  with _remote_errors(path):
    return sorted(name.rstrip('/') for name in _gfile().listdir(path))


def getsize(path: str) -> int:
  if not is_remote(path):
    return os.path.getsize(_local(path))
  with _remote_errors(path):
    return int(_gfile().stat(path).length)


def read_bytes(path: str) -> bytes:
  if not is_remote(path):
    with open(_local(path), 'rb') as f:
      return f.read()
  with _remote_errors(path), _gfile().GFile(path, 'rb') as f:
    return f.read()


def read_json(path: str) -> Optional[Any]:
  """The JSON in `path`, or None if it does not exist."""
  if not exists(path):
    return None
  return json.loads(read_bytes(path).decode())


def remove(path: str, missing_ok: bool = True):
  """Deletes one file."""
  if not is_remote(path):
    try:
      os.remove(_local(path))
    except FileNotFoundError:
      if not missing_ok:
        raise
    return
  if missing_ok and not exists(path):
    return
  with _remote_errors(path):
    _gfile().remove(path)


def rmtree(path: str):
  """Deletes a directory and everything below it (no error if it does not exist)."""
  if not is_remote(path):
    shutil.rmtree(_local(path), ignore_errors=True)
    return
  if exists(path):
    with _remote_errors(path):
      _gfile().rmtree(path)


def walk_files(directory: str) -> List[str]:
  """Paths (relative to `directory`, '/'-separated) of every file below it, sorted."""
  if not is_remote(directory):
    root = _local(directory)
    return sorted(os.path.relpath(os.path.join(parent, name), root).replace(os.sep, '/')
                  for parent, _, names in os.walk(root) for name in names)
  root = directory.rstrip('/')
  with _remote_errors(directory):
    return sorted(posixpath.join(parent, name)[len(root) + 1:]
                  for parent, _, names in _gfile().walk(root) for name in names)


_HASH_CHUNK = 4 << 20


def sha256(path: str) -> str:
  """Hex SHA-256 of a file's bytes, read in 4 MiB chunks."""
  digest = hashlib.sha256()
  if not is_remote(path):
    with open(_local(path), 'rb') as f:
      return hashlib.file_digest(f, 'sha256').hexdigest()
  with _remote_errors(path), _gfile().GFile(path, 'rb') as f:
    while chunk := f.read(_HASH_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def checksums(directory: str, names: Iterable[str]) -> Dict[str, Dict[str, Any]]:
  """{name: {'bytes': size, 'sha256': hex}} of the files `names` (relative to `directory`)."""
  return {name: {'bytes': getsize(posixpath.join(directory, name)),
                 'sha256': sha256(posixpath.join(directory, name))} for name in names}


def checksum_mismatches(directory: str, recorded: Dict[str, Dict[str, Any]]) -> List[str]:
  """What no longer matches `recorded` (made by `checksums`): one phrase per file; [] if all do.

  Sizes are compared first, so a truncated file is named as such without reading it.
  """
  problems = []
  for name, expected in sorted(recorded.items()):
    path = posixpath.join(directory, name)
    if not exists(path) or isdir(path):
      problems.append(f'{name} is missing')
    elif getsize(path) != expected['bytes']:
      problems.append(f'{name} has {getsize(path)} bytes, expected {expected["bytes"]}')
    elif sha256(path) != expected['sha256']:
      problems.append(f'{name} does not match the SHA-256 recorded when it was written')
  return problems


def upload(local_path: str, path: str):
  """Copies the local file `local_path` to `path` (overwriting); not atomic by itself."""
  if not is_remote(path):
    shutil.copyfile(local_path, _local(path))
    return
  with _remote_errors(path):
    _gfile().copy(local_path, path, overwrite=True)


def atomic_write_bytes(path: str, data: bytes):
  """Writes `data` to `path` so that a reader sees the old content or `data`, never a part."""
  if is_remote(path):
    _atomic_write_remote(path, data)
    return
  path = _local(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-' + os.path.basename(path))
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _atomic_write_remote(path: str, data: bytes):
  # See the module docstring: a whole temporary object, then a rename (on GCS a server-side
  # copy that creates the destination in one step).
  gfile = _gfile()
  parent, base = posixpath.split(path)
  tmp = posixpath.join(parent, f'.tmp-{base}-{uuid.uuid4().hex}')
  with _remote_errors(path):
    gfile.makedirs(parent)
    try:
      with gfile.GFile(tmp, 'wb') as f:
        f.write(data)
      gfile.rename(tmp, path, overwrite=True)
    except BaseException:
      try:
        if gfile.exists(tmp):
          gfile.remove(tmp)
      except Exception:  # pylint: disable=broad-except  (the original error matters)
        pass
      raise


def atomic_write_json(path: str, obj: Any):
  atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + '\n').encode())


def _remote_parent(path: str) -> Optional[str]:
  """'gs://b/x/y' → 'gs://b/x' → 'gs://b' → None."""
  scheme, rest = path.split('://', 1)
  rest = rest.rstrip('/')
  if '/' not in rest:
    return None
  return f'{scheme}://{rest.rsplit("/", 1)[0]}'


def check_writable(directory: str):
  """Raises PermissionError if `directory` cannot be created or written.

  Probes the nearest existing ancestor so that nothing is created when the check fails. For a
  remote URL that ancestor must exist (at the latest the bucket: `gs://bucket`) and be a
  directory; write permission itself is not probed there (that would create an object), so a
  read-only bucket fails at the first write (`config.json`, before any training compute).
  """
  if is_remote(directory):
    probe = directory.rstrip('/')
    while probe is not None:
      try:
        if exists(probe):
          break
      except OSError:  # E.g. an unreachable or malformed bucket: try the parent, then give up.
        pass
      probe = _remote_parent(probe)
    if probe is None:
      raise PermissionError(f'{directory} cannot be written (no part of it exists: create the '
                            'bucket first, and check the credentials).')
    if not isdir(probe):
      raise PermissionError(f'{directory} cannot be written ({probe} is a file).')
    return
  probe = os.path.abspath(_local(directory))
  while not os.path.exists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
    raise PermissionError(f'{directory} cannot be written ({probe} is not a writable '
                          'directory).')
