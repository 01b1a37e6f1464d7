"""User-facing errors: one line that names the file, row, column or key at fault."""


class ArenaDistError(Exception):
    """Base: the CLI prints the message alone (no traceback) and exits with status 2."""


class ConfigError(ArenaDistError, ValueError):
    """A configuration problem: names the key and the config file."""


class InputError(ArenaDistError, ValueError):
    """Unusable input data (missing file or column, unreadable format): names the file and the column."""


class SubmissionError(ArenaDistError, ValueError):
    """A submission that breaks the competition rules; nothing is written."""
