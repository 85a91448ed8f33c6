"""The one exception type for user mistakes: the CLI prints its message and exits with code 2."""


class UserError(Exception):
    """Something the user can fix: bad input, an unknown name, a missing file.

    The message is one sentence saying what is wrong and what to do; the CLI prints it without a
    traceback and exits with code 2.
    """

    exit_code = 2
