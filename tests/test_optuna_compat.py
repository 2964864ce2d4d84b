"""The Optuna adapter: every private symbol autoeff relies on still exists (this fails first when an Optuna
release drops or renames one), and each helper works on a real storage."""

from __future__ import annotations

import optuna
import pytest

from autoeff.optuna_compat import PRIVATE_SYMBOLS, has_heartbeat, storage_of, trial_id
from autoeff.workers import open_storage


@pytest.mark.parametrize("owner, attribute", PRIVATE_SYMBOLS, ids=[a for _, a in PRIVATE_SYMBOLS])
def test_every_private_symbol_exists(owner, attribute):
    assert hasattr(owner, attribute), f"optuna {optuna.__version__} has no {owner.__name__}.{attribute}"


def test_the_instance_attributes_exist_on_real_objects(tmp_path):
    rdb = open_storage(f"sqlite:///{tmp_path / 'i.db'}")
    study = optuna.create_study(storage=rdb, study_name="i")
    trial = study.ask()
    assert hasattr(study, "_storage") and hasattr(trial, "_trial_id") and hasattr(rdb, "scoped_session")
    study.tell(trial, 0.0)
    assert hasattr(study.get_trials()[0], "_trial_id")


def test_the_helpers_on_a_real_storage(tmp_path):
    rdb = open_storage(f"sqlite:///{tmp_path / 'c.db'}", heartbeat_interval=5)
    study = optuna.create_study(storage=rdb, study_name="c")
    trial = study.ask()
    tid = trial_id(trial)
    assert isinstance(storage_of(study), optuna.storages.BaseStorage)
    assert isinstance(tid, int) and storage_of(study).get_trial(tid).number == trial.number
    assert not has_heartbeat(rdb, tid)
    rdb.record_heartbeat(tid)
    assert has_heartbeat(rdb, tid)
    study.tell(trial, 1.0)
    assert trial_id(study.get_trials()[0]) == tid


def test_the_installed_optuna_is_the_major_version_the_adapter_was_written_for():
    assert int(optuna.__version__.split(".")[0]) == 5
