"""Custom rewards used by tests (loaded as 'tests.rewards_for_tests:<name>')."""


def shorter(completions, problems):
    """Shorter completions score higher: a signal any policy can follow, for testing updates."""
    return [-float(len(c)) / 16 for c in completions]
