"""Job records on disk and the file helpers under them (:mod:`lilypad.fsutil`): records keep
their JSON strings, a file replaced whole survives a crash, a lock holds across processes."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lilypad.creator import JobRecord, JobState, find_record, jobs_dir, load_records, save_record
from lilypad.errors import InputError
from lilypad.fsutil import atomic_writer, file_lock, replace_folder, write_atomic

#: Every state string a record of an earlier version can hold.
ON_DISK = (
    "created",
    "dealt",
    "result_submitted",
    "challenged",
    "accepted",
    "upheld",
    "provider_slashed",
    "mediation_expired",
    "timed_out",
    "cancelled",
    "module_failed",
    "failed",
)


def _record(state: str = "created") -> JobRecord:
    return JobRecord(
        "cowsay:v0.0.4", {"Message": "moo"}, "sha256:" + "0" * 64, "test", state=JobState(state)
    )


# ------------------------------------------------------------------------------------ JobState
def test_job_states_are_the_strings_records_hold() -> None:
    assert sorted(s.value for s in JobState) == sorted(ON_DISK)


def test_only_a_job_under_way_is_not_terminal() -> None:
    under_way = {s for s in JobState if not s.is_terminal()}
    assert under_way == {
        JobState.CREATED,
        JobState.DEALT,
        JobState.RESULT_SUBMITTED,
        JobState.CHALLENGED,  # the mediator has yet to rule
    }


def test_failure_states_are_the_ones_that_say_where_the_funds_went() -> None:
    # A run that fails in one of these keeps it rather than the bare "failed".
    assert {s.value for s in JobState if s.is_failure()} == {
        "cancelled",
        "timed_out",
        "challenged",
        "module_failed",
        "provider_slashed",
        "mediation_expired",
        "failed",
    }
    assert {s for s in JobState if s.is_success()} == {
        JobState.ACCEPTED,
        JobState.UPHELD,
        JobState.PROVIDER_SLASHED,  # the mediator's result was delivered
    }
    assert not any(s.is_success() for s in JobState if not s.is_terminal())


# ------------------------------------------------------------------------------------ records
@pytest.mark.parametrize("state", ON_DISK)
def test_a_record_written_by_an_earlier_version_loads_with_its_state(state: str) -> None:
    old = {
        "module": "cowsay:v0.0.4",
        "tunables": {},
        "spec_hash": "sha256:" + "0" * 64,
        "network": "test",
        "state": state,
        "job_offer_id": "0x" + "ab" * 32,
        "started_at": 1.0,
    }
    jobs_dir().mkdir(parents=True)
    (jobs_dir() / f"{old['job_offer_id']}.json").write_text(json.dumps(old))
    (record,) = load_records()
    assert record.state is JobState(state)
    assert record.state.is_terminal() is JobState(state).is_terminal()


def test_a_saved_record_holds_the_plain_state_string() -> None:
    record = _record("provider_slashed")
    record.job_offer_id = "0x" + "cd" * 32
    save_record(record)
    on_disk = json.loads((jobs_dir() / f"{record.job_offer_id}.json").read_text())
    assert on_disk["state"] == "provider_slashed"
    assert find_record("0xcdcd").state is JobState.PROVIDER_SLASHED
    assert [p.name for p in jobs_dir().iterdir()] == [f"{record.job_offer_id}.json"]


def test_a_record_with_an_unknown_state_is_skipped_not_fatal() -> None:
    jobs_dir().mkdir(parents=True)
    good = _record("accepted")
    good.job_offer_id = "0x" + "11" * 32
    save_record(good)
    bad = dict(good.to_dict(), job_offer_id="0x" + "22" * 32, state="teleported")
    (jobs_dir() / f"{bad['job_offer_id']}.json").write_text(json.dumps(bad))
    assert [r.job_offer_id for r in load_records()] == [good.job_offer_id]
    with pytest.raises(InputError, match="no job with id starting '0x2222'"):
        find_record("0x2222")


def test_a_record_without_an_offer_is_not_saved() -> None:
    save_record(_record())
    assert not jobs_dir().exists()


# ---------------------------------------------------------------------------- atomic writes
def test_write_atomic_replaces_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state.json"
    write_atomic(path, "first, and longer than the second")
    write_atomic(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temporary file left


def test_a_secret_is_never_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "job_creator.key"
    write_atomic(path, "0x" + "ab" * 32 + "\n", mode=0o600)
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    path.write_text('{"next_block": 7}')

    def write_half() -> None:
        with atomic_writer(path) as out:
            out.write(b'{"next_bl')
            raise RuntimeError("serializer failed halfway")

    with pytest.raises(RuntimeError, match="halfway"):
        write_half()
    assert path.read_text() == '{"next_block": 7}'
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_a_crash_between_write_and_rename_leaves_the_old_file(tmp_path: Path) -> None:
    """kill -9 after the new content is written and flushed, before the rename: the file is the
    old one, whole (the temporary file is hidden, and ignored by every reader)."""
    path = tmp_path / "record.json"
    path.write_text('{"state": "dealt"}')
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from lilypad.fsutil import atomic_writer
        with atomic_writer(Path({str(path)!r})) as out:
            out.write(b'{{"state": "result_submitted", "padding": "' + b"x" * 100000 + b'"}}')
            out.flush()
            print("written", flush=True)
            time.sleep(600)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "written\n"
        finally:
            child.kill()
    assert path.read_text() == '{"state": "dealt"}'
    (leftover,) = [p for p in tmp_path.iterdir() if p != path]
    assert leftover.name.startswith(".record.json.")
    assert leftover.name.endswith(".tmp")
    assert leftover.stat().st_size > 100000  # the new content had really been written
    write_atomic(path, '{"state": "accepted"}')  # and the next write is not blocked by it
    assert json.loads(path.read_text()) == {"state": "accepted"}


def test_the_file_is_flushed_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a power cut needs (and no test can cut the power): fsync of the new file while the
    old content is still in place, then fsync of the folder once the rename is done."""
    path = tmp_path / "profile.toml"
    path.write_text("old")
    seen: list[tuple[str, str]] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        seen.append((target.name if target != tmp_path else "<folder>", path.read_text()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_atomic(path, "new")
    (file_name, before), folder = seen
    assert file_name.startswith(".profile.toml.")
    assert before == "old"
    assert folder == ("<folder>", "new")


# ---------------------------------------------------------------------- folders and locks
def test_replace_folder_leaves_exactly_the_new_content(tmp_path: Path) -> None:
    dest = tmp_path / "result"
    (dest / "outputs").mkdir(parents=True)
    (dest / "outputs" / "edited-since.txt").write_text("stale")
    fresh = tmp_path / ".fresh"
    (fresh / "outputs").mkdir(parents=True)
    (fresh / "outputs" / "image.png").write_bytes(b"png")
    replace_folder(fresh, dest)
    assert sorted(p.name for p in (dest / "outputs").iterdir()) == ["image.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]  # nothing aside


def test_file_lock_excludes_another_process(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / "0xabc.lock"
    with file_lock(lock):
        probe = (
            "import fcntl, sys\n"
            f"handle = open({str(lock)!r}, 'a')\n"
            "try:\n"
            "    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "except BlockingIOError:\n"
            "    sys.exit(3)\n"
        )
        assert subprocess.run([sys.executable, "-c", probe], timeout=30).returncode == 3
    with lock.open("a") as handle:  # released at the end of the block
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
