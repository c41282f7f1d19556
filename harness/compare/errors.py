"""The one error type behind exit code 2: input that cannot be compared, as opposed to a regression."""


class CompareInputError(ValueError):
    """Unreadable or unmatched input, or a bad tolerance file; the message names the culprit."""
