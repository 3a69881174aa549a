"""The original's selection rule (reference 6.4) on hand-made score lists."""

from mrgen.filtering.base import FilterScores
from mrgen.filtering.selection import SelectionRule, Thresholds


def s(ious, confs):
    return FilterScores(list(ious), list(confs))


GOOD = s([0.9, 0.85, 0, 0.9], [0.95, 0.92, 0, 0.93])        # passes strict
GOOD2 = s([0.88, 0.86], [0.95, 0.91])                        # passes strict, lower mean IoU
RELAXED = s([0.75, 0.72], [0.85, 0.82])                     # mean IoU 0.735, mean conf 0.835: relaxed only
WEAK_ORGAN = s([0.99, 0.65], [0.99, 0.99])                  # mean IoU 0.82 but one organ < 0.70
BAD = s([0.3, 0.2], [0.5, 0.4])


def test_absent_organs_are_left_out_of_the_means():
    assert GOOD.avg_iou == (0.9 + 0.85 + 0.9) / 3
    assert GOOD.avg_confidence == (0.95 + 0.92 + 0.93) / 3
    assert s([0, 0], [0, 0]).avg_iou == 0.0


def test_keeps_the_first_two_strict_passes_by_mean_iou():
    rule = SelectionRule()
    kept, how = rule.select([("a", BAD), ("b", GOOD2), ("c", GOOD), ("d", GOOD)])
    assert how == "strict" and kept == ["c", "d"]  # ranked by mean IoU, ties by try order


def test_relaxes_by_a_tenth_and_keeps_one():
    rule = SelectionRule()
    kept, how = rule.select([("a", RELAXED), ("b", GOOD), ("c", BAD)])
    assert (kept, how) == (["b"], "relaxed")  # one strict pass is not enough: relaxed rule, at most one
    kept, how = rule.select([("a", RELAXED), ("b", BAD)])
    assert (kept, how) == (["a"], "relaxed")


def test_nothing_kept_when_nothing_passes():
    assert SelectionRule().select([("a", BAD), ("b", s([0.99, 0.55], [0.99, 0.99]))]) == ([], "none")


def test_every_present_organ_must_pass():
    assert not Thresholds().passes(WEAK_ORGAN)
    assert Thresholds().relaxed(0.1).passes(WEAK_ORGAN)


def test_only_the_top_k_are_considered():
    high_iou_low_conf = s([0.99, 0.99], [0.5, 0.5])
    candidates = [(f"x{i}", high_iou_low_conf) for i in range(5)] + [("g1", GOOD), ("g2", GOOD)]
    assert SelectionRule().select(candidates) == ([], "none")
    assert SelectionRule(top_k=7).select(candidates) == (["g1", "g2"], "strict")


def test_every_number_is_configurable():
    rule = SelectionRule(Thresholds(iou=0.5, confidence=0.5, avg_iou=0.6, avg_confidence=0.6), top_k=3, keep=1)
    assert rule.select([("a", RELAXED), ("b", BAD)]) == (["a"], "strict")
    assert rule.with_thresholds(avg_iou=0.9).thresholds.avg_iou == 0.9


def test_early_stop_agrees_with_the_rule():
    rule = SelectionRule()
    assert not rule.enough_strict([GOOD, BAD])
    assert rule.enough_strict([GOOD, BAD, GOOD2])


def test_per_organ_rule_keeps_a_candidate_one_organ_of_which_passes_and_names_the_others():
    rule = SelectionRule(per_organ=True)
    one_good_organ = s([0.95, 0.2, 0, 0.5], [0.95, 0.3, 0, 0.9])  # mean IoU 0.55: the original rule rejects it
    assert not rule.thresholds.passes(one_good_organ)
    assert rule.select([("a", one_good_organ), ("b", BAD), ("c", GOOD)]) == (["c", "a"], "strict")
    assert rule.failing_organs(one_good_organ, present=[0, 1, 3], how="strict") == [1, 3]
    assert rule.failing_organs(GOOD, present=[0, 1, 3], how="strict") == []
    assert rule.select([("a", BAD)]) == ([], "none")
    assert rule.enough_strict([one_good_organ, GOOD]) and not SelectionRule().enough_strict([one_good_organ, GOOD])
    relaxed_only = s([0.65, 0.1], [0.75, 0.1])
    assert rule.select([("a", relaxed_only)]) == (["a"], "relaxed")
    assert rule.failing_organs(relaxed_only, present=[0, 1], how="relaxed") == [1]
    assert "per organ" in rule.describe() and "mean IoU 0.80" in SelectionRule().describe()
