"""The one exception type users can cause; the CLI prints it as one line and exits 2."""


class UsageError(Exception):
    """Bad input from the user: the message names the bad value and what is accepted."""


class TrainingDiverged(RuntimeError):
    """The training collapsed (non-finite loss, or a model at chance): its records get status
    "diverged" with ``curve`` (per-epoch "loss" and "val_acc", as far as it got), the suite goes on."""

    def __init__(self, message: str, curve: dict | None = None) -> None:
        super().__init__(message)
        self.curve = curve or {}


class NotApplicable(Exception):
    """A method cannot apply to this model or target; recorded as skipped with this reason."""


class BudgetMismatch(RuntimeError):
    """Methods of one suite used different numbers of optimizer steps: the comparison is void.

    Raised before the offending record is written; the CLI prints it as one line and exits 1.
    """
