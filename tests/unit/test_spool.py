import threading
from pathlib import Path

import pytest

from tumorlens.errors import InsufficientStorageError, InvalidUIDError
from tumorlens.identifiers import InstanceKey, validate_uid
from tumorlens.listener.spool import Spool


@pytest.mark.parametrize(
    "uid",
    ["1.2.3", "1.2.840.10008.5.1.4.1.1.4", "0.0", "1." + "2" * 62],
)
def test_valid_uids(uid: str) -> None:
    assert validate_uid(uid, "X") == uid


@pytest.mark.parametrize(
    "uid",
    ["", "../../etc", "1.2/3", "1.2.3\n", "1..2", ".1", "1.2.", "1." + "2" * 63, "1.2.a", None],
)
def test_invalid_uids(uid: object) -> None:
    with pytest.raises(InvalidUIDError):
        validate_uid(uid, "X")


def key(sop: str = "1.2.3.4") -> InstanceKey:
    return InstanceKey("1.2.3", "1.2.3.1", sop)


def test_store_is_atomic_and_kept_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    first = spool.store(key(), b"first")
    assert first.created
    assert first.path == tmp_path / "spool" / "1.2.3" / "1.2.3.1" / "1.2.3.4.dcm"
    second = spool.store(key(), b"second")
    assert not second.created
    assert first.path.read_bytes() == b"first"  # never replaced
    assert list((tmp_path / "spool" / ".incoming").iterdir()) == []


def test_concurrent_copies_of_one_instance_end_as_one_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    results = []
    barrier = threading.Barrier(8)

    def store() -> None:
        barrier.wait()
        results.append(spool.store(key(), b"x" * 100_000))

    threads = [threading.Thread(target=store) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.created for r in results) == 1
    assert [p.name for p in (tmp_path / "spool" / "1.2.3" / "1.2.3.1").iterdir()] == ["1.2.3.4.dcm"]
    assert list((tmp_path / "spool" / ".incoming").iterdir()) == []


def test_reserve_refuses_and_writes_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reserve_bytes=2**62)
    with pytest.raises(InsufficientStorageError, match="reserve"):
        spool.store(key(), b"data")
    assert list((tmp_path / "spool").rglob("*.dcm")) == []
    assert list((tmp_path / "spool" / ".incoming").iterdir()) == []


def test_leftovers_of_a_crash_are_dropped_at_start(tmp_path: Path) -> None:
    incoming = tmp_path / "spool" / ".incoming"
    incoming.mkdir(parents=True)
    (incoming / "tmp123.part").write_bytes(b"half")
    Spool(tmp_path / "spool")
    assert list(incoming.iterdir()) == []


def test_instances_listing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.store(key("1.2.3.4"), b"a")
    spool.store(key("1.2.3.5"), b"b")
    assert list(spool.studies()) == ["1.2.3"]
    assert [(s, i) for s, i, _ in spool.instances("1.2.3")] == [
        ("1.2.3.1", "1.2.3.4"),
        ("1.2.3.1", "1.2.3.5"),
    ]
