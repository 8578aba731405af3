"""User-facing errors.

Anything the user can fix (a path, a value, a mismatch between artifacts) is raised as
`RetaError` with a one-line message that names the culprit and the fix; the CLI prints it
and exits with status 2 instead of a traceback.
"""


class RetaError(Exception):
    """An error caused by input the user can correct."""
