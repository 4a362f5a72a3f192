"""The one exception type for bad user input.

The launcher turns an `InputError` into one line on stderr and exit status 2, so
every check of a user-given file or value raises this with the file and the problem.
"""


class InputError(Exception):
  """Bad user input: a message naming the file (or key) and what is wrong."""
