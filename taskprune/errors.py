"""One exception type for every mistake a user can make.

The CLI catches :class:`TaskpruneError` and prints its message as one line (exit code 2), so every
check on user input raises it with a message that names the problem and, where possible, the fix.
"""


class TaskpruneError(ValueError):
    """A problem with the user's input: unknown task, missing column, bad rate, foreign plan, ..."""
