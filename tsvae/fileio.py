"""Small crash-safe file helpers: whatever is read back was written completely.

Files are written to a temporary sibling and moved into place with `os.replace` (atomic on POSIX
file systems), so a process killed mid-write leaves the old file or none, never half of one.
Local paths only; Orbax handles checkpoints on remote file systems itself.
"""

import json
import os
import tempfile
from typing import Any, Optional


def atomic_write_bytes(path: str, data: bytes):
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


def atomic_write_json(path: str, obj: Any):
  atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + '\n').encode())


def read_json(path: str) -> Optional[Any]:
  """The JSON in `path`, or None if it does not exist."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def check_writable(directory: str):
  """Raises PermissionError if `directory` cannot be created or written.

  Probes the nearest existing ancestor so that nothing is created when the check fails.
  """
  probe = os.path.abspath(directory)
  while not os.path.exists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
    raise PermissionError(f'{directory} cannot be written ({probe} is not a writable '
                          'directory).')
