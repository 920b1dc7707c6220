"""The one error type the data layer raises for missing or malformed data."""


class DataError(ValueError):
  """Data files are missing, incomplete or malformed.

  The message always says which files are expected where, so a user can fix the problem without
  reading the code.
  """
