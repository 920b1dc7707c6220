"""What the three command-line entry points share (filled in below)."""

import sys

from absl import logging

BAD_INPUT_EXIT_CODE = 2
NON_FINITE_EXIT_CODE = 3


def fail(message: str, code: int = 1):
  """Logs `message`, prints it to stderr and exits with `code`."""
  logging.error(message)
  print(message, file=sys.stderr)
  sys.exit(code)
