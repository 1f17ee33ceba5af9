"""Bad input, told apart from a bug.

The package raises `InputError` when what it was given is wrong: an empty prompt, k out of
range, a negative temperature, a drafter whose vocabulary differs from the target's, a corrupt
weights file. Its message names the problem and the fix. The command line prints it as one
line and exits with status 2; any other exception is a bug in minispec and keeps its traceback.
It is a ValueError, so code that catches ValueError still catches it.
"""


class InputError(ValueError):
    """What the caller passed cannot work; the message says what would."""
