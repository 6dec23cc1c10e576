"""The one exception type users can cause; the CLI prints it as one line and exits 2."""


class UsageError(Exception):
    """Bad input from the user: the message names the bad value and what is accepted."""


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the run is recorded as failed and the suite goes on."""


class NotApplicable(Exception):
    """A method cannot apply to this model or target; recorded as skipped with this reason."""


class BudgetMismatch(RuntimeError):
    """Methods of one suite used different numbers of optimizer steps: the comparison is void.

    Raised before the offending record is written; the CLI prints it as one line and exits 1.
    """
