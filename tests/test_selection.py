"""Successive halving from the proxy sample to the final sample (`autoeff.selection`), with fake measurements."""

from __future__ import annotations

import optuna

from autoeff.evaluators.latency import LatencyResult
from autoeff.evaluators.quality import QualityResult, score
from autoeff.measurement import Measurement
from autoeff.recipe import Recipe
from autoeff.selection import best_by_evidence, contender_samples, contends, sample_rungs, select
from autoeff.study import StoredStudy, TrialRecord

BUDGET = 0.010


def _q(fid: float, n: int, se: float = 1.0) -> QualityResult:
    return QualityResult(metric="fid", value=fid, higher_is_better=False, n=n, stderr=se)


def _rec(number: int, proxy_fid: float, latency: float = 0.008, n: int = 16,
         contender: tuple[int, float] | None = None) -> TrialRecord:
    q = _q(proxy_fid, n)
    return TrialRecord(number=number, recipe=Recipe(model="digits"), params={},
                       measurement=Measurement(latency_s=latency, quality=q, score=score(q)),
                       contender=None if contender is None else (contender[0], _q(contender[1], contender[0], 0.2)))


def _lat(seconds: float) -> LatencyResult:
    return LatencyResult(median_s=seconds, p10_s=seconds, p90_s=seconds, iqr_s=0.0, rel_spread=0.0, repeats=5,
                         warmup=1, device="cpu", threads=1, omp_wait_policy="PASSIVE")


class Fake:
    """Measurements on larger samples: `fid[number]` at every n, `latency[number]` when re-timed."""

    def __init__(self, fid: dict[int, float], latency: dict[int, float] | None = None) -> None:
        self.fid, self.latency = fid, latency or {}
        self.measured: list[tuple[int, int]] = []
        self.retimed: list[int] = []
        self.final: list[int] = []

    def measure(self, rec: TrialRecord, n: int) -> QualityResult:
        self.measured.append((rec.number, n))
        return _q(self.fid[rec.number], n, se=0.2)

    def remeasure(self, rec: TrialRecord) -> Measurement:
        self.final.append(rec.number)
        q = _q(self.fid[rec.number], 64, se=0.1)
        latency = self.latency.get(rec.number, rec.latency_s)
        return Measurement(latency_s=latency, quality=q, score=score(q), over_budget=latency > BUDGET)

    def retime(self, rec: TrialRecord) -> LatencyResult:
        self.retimed.append(rec.number)
        return _lat(self.latency.get(rec.number, rec.latency_s))


def _select(records: list[TrialRecord], fake: Fake, final: int = 64, top_k: int = 1, noise: float = 0.05):
    return select(records, BUDGET, top_k=top_k, final_samples=final, remeasure=fake.remeasure,
                  stored=StoredStudy(optuna.create_study()), measure=fake.measure, retime=fake.retime, noise=noise)


def test_rungs_grow_fourfold_from_the_proxy_to_the_final_sample():
    assert sample_rungs(128, 1000) == [128, 512, 1000]
    assert sample_rungs(16, 64) == [16, 64]
    assert sample_rungs(32, 32) == [32, 32]


def test_every_candidate_within_the_proxys_noise_reaches_the_final_sample_and_the_best_there_wins():
    # proxy: 0 is best (10), 1 and 2 are within 2 standard errors of the difference (se 1 each), 3 and 4 are not
    records = [_rec(0, 10.0), _rec(1, 11.5), _rec(2, 12.0), _rec(3, 16.0), _rec(4, 30.0)]
    fake = Fake(fid={0: 6.0, 1: 5.0, 2: 7.0, 3: 4.0, 4: 3.0})
    chosen = _select(records, fake)
    assert sorted(fake.final) == [0, 1, 2]  # not a fixed top-k: the three the proxy cannot tell apart
    assert chosen.best is not None and chosen.best.record.number == 1  # the final sample decides
    assert chosen.rungs[0]["promoted"] == [0, 1, 2]


def test_an_intermediate_rung_drops_what_it_can_tell_apart():
    # three within the proxy's noise (half of the six, the halving's cap), then 64 samples tell trial 2 apart
    records = [_rec(0, 10.0), _rec(1, 10.5), _rec(2, 11.0), *(_rec(n, 30.0) for n in range(3, 6))]
    fake = Fake(fid={0: 5.0, 1: 5.1, 2: 9.0})
    chosen = _select(records, fake, final=256, top_k=1)
    assert sorted(fake.measured) == [(0, 64), (1, 64), (2, 64)]
    assert sorted(fake.final) == [0, 1] and chosen.best is not None and chosen.best.record.number == 0


def test_a_candidate_near_the_budget_is_re_timed_before_it_becomes_a_finalist():
    # trial 0 met the budget in the search at 9.9 ms (within 2 noise floors of 10 ms) but re-times at 11 ms
    records = [_rec(0, 10.0, latency=0.0099), _rec(1, 13.0, latency=0.005), _rec(2, 20.0, latency=0.005)]
    fake = Fake(fid={0: 4.0, 1: 6.0, 2: 8.0}, latency={0: 0.011})
    chosen = _select(records, fake)
    assert fake.retimed == [0]  # only the one near the budget
    assert 0 not in fake.final and 1 in fake.final  # dropped before the final sample; the next best took over
    assert chosen.best is not None and chosen.best.record.number == 1
    assert chosen.retimed[0]["kept"] is False


def test_finalists_over_budget_when_re_timed_bring_in_the_next_best():
    records = [_rec(n, 10.0 + 3 * n, latency=0.005) for n in range(5)]  # each clearly apart: one promoted
    fake = Fake(fid={n: 5.0 + n for n in range(5)}, latency={0: 0.011, 1: 0.012})
    chosen = _select(records, fake, top_k=2)
    assert fake.final[:3] == [0, 1, 2]  # 0 and 1 miss the budget when re-timed, so 2 comes in
    assert chosen.best is not None and chosen.best.record.number == 2


def test_nothing_within_budget_selects_nothing_and_measures_nothing():
    fake = Fake(fid={0: 1.0})
    chosen = _select([_rec(0, 10.0, latency=0.02)], fake)
    assert chosen.best is None and fake.final == [] and fake.measured == []


def test_the_first_rung_above_the_proxy_is_measured_during_the_search_only_below_the_final_sample():
    assert contender_samples(128, 1000) == 512
    assert contender_samples(16, 64) is None and contender_samples(16, 32) is None  # that rung is the final one
    # within 2 standard errors of the difference from the best (FID: lower is better)
    assert contends(_q(12.0, 16), _q(10.0, 16)) and not contends(_q(13.0, 16), _q(10.0, 16))
    assert contends(_q(50.0, 16), None)  # the first candidate is the best so far


def test_the_best_by_evidence_ranks_by_the_larger_sample_not_the_proxy():
    # the proxy prefers 0 (10.0), the first rung prefers 1 (5.0 against 6.0); 2 was never within noise
    records = [_rec(0, 10.0, contender=(64, 6.0)), _rec(1, 11.0, contender=(64, 5.0)), _rec(2, 25.0),
               _rec(3, 4.0, latency=0.02, contender=(64, 1.0))]  # 3 is over budget
    best = best_by_evidence(records, BUDGET)
    assert best is not None and best.number == 1
    assert best_by_evidence([_rec(0, 10.0), _rec(1, 9.0)], BUDGET).number == 1  # none scored there: the proxy
    assert best_by_evidence([_rec(0, 1.0, latency=0.02)], BUDGET) is None


def test_a_score_taken_during_the_search_is_reused_and_takes_part_whatever_its_proxy_rank():
    # six candidates, the halving's cap would promote three by the proxy (0, 1, 2); trial 5 was scored on the
    # first rung during the search (64 samples) and is the best there
    records = [_rec(0, 10.0), _rec(1, 10.2), _rec(2, 10.4), _rec(3, 10.6), _rec(4, 10.8),
               _rec(5, 11.0, contender=(64, 3.0))]
    fake = Fake(fid={0: 6.0, 1: 6.5, 2: 7.0, 3: 7.0, 4: 7.0, 5: 3.0})
    chosen = _select(records, fake, final=256)
    assert (5, 64) not in fake.measured  # reused, not measured again
    assert sorted(fake.measured) == [(0, 64), (1, 64), (2, 64)]
    assert 5 in [m["number"] for m in chosen.rungs[1]["measured"]]
    assert chosen.best is not None and chosen.best.record.number == 5


def test_a_tie_on_the_final_sample_goes_to_the_faster_candidate():
    # 0 and 1 are twins (the same images, so the same scores at every sample; 1 compiled and faster); 0 comes first
    # in every ranking by score alone
    records = [_rec(0, 10.0, latency=0.009), _rec(1, 10.0, latency=0.006), _rec(2, 30.0, latency=0.004)]
    fake = Fake(fid={0: 5.0, 1: 5.0, 2: 9.0}, latency={0: 0.0095, 1: 0.0061})
    chosen = _select(records, fake, noise=0.0)
    assert sorted(fake.final) == [0, 1]
    assert chosen.best is not None and chosen.best.record.number == 1
    # a better score still wins over a faster one
    fake = Fake(fid={0: 4.9, 1: 5.0, 2: 9.0}, latency={0: 0.0095, 1: 0.0061})
    assert _select(records, fake, noise=0.0).best.record.number == 0
    # and the planner's best by evidence breaks a tie the same way
    assert best_by_evidence(records[:2], BUDGET).number == 1
    twins = [_rec(0, 10.0, latency=0.009, contender=(64, 6.0)), _rec(1, 10.0, latency=0.006, contender=(64, 6.0))]
    assert best_by_evidence(twins, BUDGET).number == 1


def test_export_under_a_new_budget_tries_the_faster_twin_first():
    from autoeff.pick import ranked_under

    records = [_rec(0, 10.0, latency=0.009), _rec(1, 10.0, latency=0.006), _rec(2, 8.0, latency=0.02),
               _rec(3, 12.0, latency=0.003)]
    assert [r.number for r in ranked_under(records, BUDGET)] == [1, 0, 3]  # 2 is over the budget
