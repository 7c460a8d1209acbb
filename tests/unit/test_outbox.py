from pathlib import Path

import pytest

from agent.outbox import Outbox


def payload(seq: int) -> bytes:
    return f"w{seq}".encode()


def test_sequences_survive_restart_and_only_grow(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", cap=10)
    assert [box.append("telemetry", payload)[0] for _ in range(3)] == [1, 2, 3]
    assert box.append("samples", payload)[0] == 1
    box.close()
    again = Outbox(tmp_path / "o.db", cap=10)
    assert again.append("telemetry", payload)[0] == 4
    assert again.last_seq("telemetry") == 4


def test_a_failed_message_does_not_consume_a_number(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", cap=10)

    def broken(seq: int) -> bytes:
        raise ValueError("cannot serialise")

    with pytest.raises(ValueError, match="serialise"):
        box.append("telemetry", broken)
    assert box.append("telemetry", payload)[0] == 1


def test_messages_stay_until_acked(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", cap=10)
    for _ in range(3):
        box.append("telemetry", payload)
    assert [i.seq for i in box.pending()] == [1, 2, 3]
    assert box.ack("telemetry", [1, 3, 99]) == 2
    box.close()
    again = Outbox(tmp_path / "o.db", cap=10)
    assert [(i.seq, i.payload) for i in again.pending()] == [(2, b"w2")]
    assert again.ack("samples", [2]) == 0  # another channel's numbers


def test_overflow_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", cap=3)
    dropped = [box.append("telemetry", payload)[1] for _ in range(5)]
    assert dropped == [0, 0, 0, 1, 1]
    assert [i.seq for i in box.pending()] == [3, 4, 5]
    assert box.dropped == 2
    assert len(box) == 3


def test_pending_after_skips_what_each_channel_has_sent(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", cap=10)
    for _ in range(3):
        box.append("telemetry", payload)
        box.append("samples", payload)
    newer = box.pending(after={"telemetry": 2, "samples": 0})
    expected = [("samples", 1), ("samples", 2), ("telemetry", 3), ("samples", 3)]
    assert [(i.channel, i.seq) for i in newer] == expected
    assert [i.seq for i in box.pending(after={"telemetry": 3})] == [1, 2, 3]  # samples only
    assert len(box.pending(1, after={"telemetry": 1})) == 1
