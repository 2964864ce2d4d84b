"""The errors a search raises for its user (the CLI prints their message as one line and exits 2, or 3 when
nothing met the budget)."""

from __future__ import annotations

from typing import Any


class SearchError(RuntimeError):
    """The search cannot run as configured (the message says why and what to do)."""


class SettingsError(SearchError, ValueError):
    """A search setting is out of range or of the wrong type (the message names the option and the fix)."""


class IncompatibleStudyError(SearchError):
    """A study of that name exists for another model, budget, metric or space."""


class NoFeasibleCandidateError(SearchError):
    """No measured candidate met the budget. `result` is the search's `OptimizeResult` (its `best` is None);
    `fastest` the quickest completed trial, if any."""

    def __init__(self, message: str, fastest: Any = None, result: Any = None) -> None:
        super().__init__(message)
        self.fastest = fastest
        self.result = result


__all__ = ["SearchError", "SettingsError", "IncompatibleStudyError", "NoFeasibleCandidateError"]
