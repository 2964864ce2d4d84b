"""Every use of Optuna's private API, in one place (written against Optuna 5.0; `optuna>=5,<6`).

Optuna has no public way to: reach a study's storage (`Study._storage`); name a trial in storage calls
(`FrozenTrial._trial_id`, `Trial._trial_id`); ask whether a running trial has ever recorded a heartbeat (the
query `RDBStorage._get_stale_trial_ids` itself runs); or add trials to the stale set Optuna computes (the
method `_get_stale_trial_ids`, which `optuna.storages.fail_stale_trials` calls). `PRIVATE_SYMBOLS` lists each
one; `tests/test_optuna_compat.py` fails as soon as an Optuna release drops or renames one of them.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._rdb import models as _rdb_models
from optuna.storages._rdb import storage as _rdb_storage
from optuna.storages._rdb.storage import _create_scoped_session

# (owner, attribute) pairs of classes and modules this module relies on; the test checks each one exists.
# The instance attributes (`Study._storage`, `FrozenTrial._trial_id`, `Trial._trial_id`,
# `RDBStorage.scoped_session`) are set in `__init__`; the test uses every helper on a real storage.
PRIVATE_SYMBOLS: tuple[tuple[Any, str], ...] = (
    (RDBStorage, "_get_stale_trial_ids"),
    (_rdb_storage, "_create_scoped_session"),
    (_rdb_models.TrialHeartbeatModel, "where_trial_id"),
)


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes (`Study._storage`)."""
    return study._storage


def trial_id(trial: optuna.trial.FrozenTrial | optuna.Trial) -> int:
    """The storage's id of a trial (`_trial_id`), which storage methods take instead of its number."""
    return int(trial._trial_id)


def has_heartbeat(storage: RDBStorage, trial_id: int) -> bool:
    """Whether the running trial `trial_id` has recorded a heartbeat (the query Optuna's own check runs)."""
    with _create_scoped_session(storage.scoped_session) as session:
        return _rdb_models.TrialHeartbeatModel.where_trial_id(trial_id, session) is not None


class StaleTrialsStorage(RDBStorage):
    """`RDBStorage` whose stale-trial set (the trials `fail_stale_trials` fails) a subclass can extend by
    overriding `more_stale_trials(study_id, stale)`."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = list(super()._get_stale_trial_ids(study_id))
        return self.more_stale_trials(study_id, stale)

    def more_stale_trials(self, study_id: int, stale: list[int]) -> list[int]:
        """Optuna's stale trial ids `stale`, extended; the default adds none."""
        return stale


__all__ = ["PRIVATE_SYMBOLS", "StaleTrialsStorage", "has_heartbeat", "storage_of", "trial_id"]
