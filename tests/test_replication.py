"""The replication rules: a watermark never passes a record this node lacks."""

from __future__ import annotations

from swarm.core.replication import Intake, behind

A, B = ("a", 1), ("b", 7)


def taken(intake: Intake, copies: list[tuple[str, int, int]]) -> list[int]:
    out = []
    for origin, generation, seq in copies:
        if intake.wants(origin, generation, seq):
            intake.took((origin, generation), seq)
            out.append(seq)
    return out


def test_a_push_is_taken_only_from_the_next_seq_without_gaps() -> None:
    intake = Intake({A: 3}, me=("me", 1), asked=None)
    assert taken(intake, [("a", 1, 3), ("a", 1, 4), ("a", 1, 6), ("a", 1, 5)]) == [4, 5]


def test_a_sync_answer_is_taken_whole_past_what_is_held() -> None:
    intake = Intake({A: 3}, me=("me", 1), asked={})
    assert taken(intake, [("a", 1, 2), ("a", 1, 5), ("a", 1, 9)]) == [5, 9]
    assert dict(intake.watermarks({A: 10, B: 4})) == {A: 10, B: 4}


def test_own_records_are_never_taken_from_a_peer_but_those_of_a_wiped_past_are() -> None:
    intake = Intake({}, me=("a", 2), asked={})
    assert taken(intake, [("a", 2, 1), ("a", 1, 1)]) == [1]
    assert dict(intake.watermarks({("a", 2): 5, A: 1})) == {A: 1}


def test_a_refused_record_stops_its_origin_and_holds_the_watermark_below_it() -> None:
    intake = Intake({A: 1}, me=("me", 1), asked={})
    assert intake.wants("a", 1, 2)
    intake.refuse(A, 2)
    assert not intake.wants("a", 1, 3)  # nothing past it from this message
    assert taken(intake, [("b", 7, 1)]) == [1]  # other origins are not held up
    assert dict(intake.watermarks({A: 9, B: 1})) == {B: 1}
    assert intake.refused == 1


def test_watermarks_never_go_down() -> None:
    intake = Intake({A: 8}, me=("me", 1), asked={})
    assert dict(intake.watermarks({A: 5})) == {}


def test_behind_lists_what_the_peer_lacks_and_from_where() -> None:
    assert sorted(behind({A: 5, B: 2}, {A: 5, B: 1})) == [(B, 1)]
    assert sorted(behind({A: 5}, {})) == [(A, 0)]
    assert list(behind({A: 5}, {A: 9})) == []


def test_a_sync_answer_is_not_taken_where_we_hold_less_than_the_digest_said() -> None:
    # We asked with A up to 5, then lost our ledger (a wipe): the answer starts past 5.
    intake = Intake({B: 1}, me=("me", 1), asked={A: 5, B: 1})
    assert taken(intake, [("a", 1, 6), ("a", 1, 7), ("b", 7, 2)]) == [2]
    assert dict(intake.watermarks({A: 7, B: 2})) == {B: 2}
