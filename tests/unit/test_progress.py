"""dmf_ray.progress: a failing callback never breaks a workflow; input rows counted as the readers count them."""

from __future__ import annotations

import time

from dmf_ray.inputs import discover_inputs, read_chunks
from dmf_ray.progress import Reporter, RowCount


def test_a_callback_that_raises_is_logged_once_and_dropped():
    calls, lines = [], []

    def display(done, total):
        calls.append((done, total))
        raise ValueError("terminal closed")

    report = Reporter(display, lines.append, "embed")
    assert report.wanted
    for done in range(3):
        report(done, 2)
    assert calls == [(0, 2)]
    assert lines == ["embed: the progress callback failed (ValueError: terminal closed); continuing without progress reports"]
    Reporter(None, lines.append, "embed")(1, 1)  # no callback: nothing to call, nothing logged
    assert not Reporter(None, print, "x").wanted and len(lines) == 1


def _wait_for(count: RowCount) -> int | None:
    deadline = time.time() + 30
    while count.total is None and time.time() < deadline:
        time.sleep(0.01)
    return count.total


def test_row_count_follows_the_readers_rules_and_skips_done_chunks(tmp_path):
    smi = tmp_path / "lib.smi"
    smi.write_text("smiles id\nCCO a\n\nCCN b\n   \nc1ccccc1 c\nCC d\nbad( e\n")  # header and blank lines
    csv = tmp_path / "lib.csv"
    csv.write_text("smiles,name\nCCO,x\nCCN,y,extra\nCC,z\n")  # a malformed row is a row (a failure)
    files = discover_inputs([str(smi), str(csv)])
    expected = sum(len(c.rows) for f in files for c in read_chunks(f, 2))
    assert expected == 5 + 3
    assert _wait_for(RowCount(files, 2)) == expected
    done = {files[0].chunk_key(0)}  # a committed chunk of 2 rows is not counted
    assert _wait_for(RowCount(files, 2, done)) == expected - 2


def test_row_count_of_an_unreadable_file_stays_unknown(tmp_path):
    path = tmp_path / "lib.smi.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00truncated")
    files = discover_inputs([str(path)], format="smi")
    count = RowCount(files, 10)
    count._thread.join(10)
    assert count.total is None
