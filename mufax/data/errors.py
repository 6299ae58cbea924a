"""The one exception type for bad benchmark input."""


class DataError(ValueError):
  """Input data is missing or malformed.

  The message always names the offending file (and row, where there is one) and
  says what to do about it.
  """
