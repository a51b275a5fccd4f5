"""Run ledger: hash chain over ledger.jsonl, tamper detection."""

from __future__ import annotations

import json

import pytest

from secure_ft.errors import BundleError
from secure_ft.records.run_directory import RUN_LEDGER_FILE as LEDGER_FILE
from secure_ft.records.run_ledger import GENESIS_SHA256, Ledger, line_digest, verify_ledger


def _ledger(tmp_path, n=4):
    ledger = Ledger(tmp_path)
    for index in range(n):
        ledger.append("epoch_done", epoch=index, epsilon=0.5 * (index + 1))
    return ledger


def _lines(tmp_path):
    return (tmp_path / LEDGER_FILE).read_bytes().splitlines(keepends=True)


def _write(tmp_path, lines):
    (tmp_path / LEDGER_FILE).write_bytes(b"".join(lines))


def test_chain_links_each_line_to_the_previous_bytes(tmp_path):
    ledger = _ledger(tmp_path)
    entries = ledger.events()
    lines = _lines(tmp_path)
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    assert entries[0]["prev_sha256"] == GENESIS_SHA256
    for previous, entry in zip(lines, entries[1:]):
        assert entry["prev_sha256"] == line_digest(previous)
    assert entries[2]["data"] == {"epoch": 2, "epsilon": 1.5}
    assert entries[0]["timestamp"].endswith("+00:00")
    assert verify_ledger(tmp_path) == 4


def test_reopening_continues_the_chain(tmp_path):
    _ledger(tmp_path, 2)
    entry = Ledger(tmp_path).append("resumed", step=7)
    assert entry["seq"] == 3
    assert entry["prev_sha256"] == line_digest(_lines(tmp_path)[1])
    assert verify_ledger(tmp_path) == 3


@pytest.mark.parametrize("line_index", [0, 2, 3])
def test_edited_line_is_named(tmp_path, line_index):
    _ledger(tmp_path)
    lines = _lines(tmp_path)
    lines[line_index] = lines[line_index].replace(b'"epsilon":', b'"epsilon": ')
    if b'"epsilon": ' not in lines[line_index]:
        pytest.fail("test setup did not change the line")
    _write(tmp_path, lines)
    with pytest.raises(BundleError, match=f"line {line_index + 1}"):
        verify_ledger(tmp_path)


def test_edited_value_with_recomputed_self_hash_breaks_the_chain(tmp_path):
    _ledger(tmp_path)
    lines = _lines(tmp_path)
    entry = json.loads(lines[1])
    entry["data"]["epsilon"] = 0.1  # a forger who also recomputes line_sha256
    from secure_ft.records.run_ledger import _canonical, _line_sha256

    entry["line_sha256"] = _line_sha256(entry)
    lines[1] = (_canonical(entry) + "\n").encode()
    _write(tmp_path, lines)
    with pytest.raises(BundleError, match="line 3"):
        verify_ledger(tmp_path)


def test_deleted_line_is_named(tmp_path):
    _ledger(tmp_path)
    lines = _lines(tmp_path)
    del lines[1]
    _write(tmp_path, lines)
    with pytest.raises(BundleError, match="line 2"):
        verify_ledger(tmp_path)


def test_swapped_lines_are_named(tmp_path):
    _ledger(tmp_path)
    lines = _lines(tmp_path)
    lines[1], lines[2] = lines[2], lines[1]
    _write(tmp_path, lines)
    with pytest.raises(BundleError, match="line 2"):
        verify_ledger(tmp_path)


def test_truncated_tail_is_caught_against_an_anchor(tmp_path):
    ledger = _ledger(tmp_path)
    count, head = ledger.head()
    assert verify_ledger(tmp_path, expected_lines=count, expected_head_sha256=head) == 4
    _write(tmp_path, _lines(tmp_path)[:3])
    assert verify_ledger(tmp_path) == 3  # the chain alone cannot see a cut tail
    with pytest.raises(BundleError, match="lines 4..4 were removed"):
        verify_ledger(tmp_path, expected_lines=count, expected_head_sha256=head)


def test_append_refuses_to_extend_a_tampered_ledger(tmp_path):
    _ledger(tmp_path)
    lines = _lines(tmp_path)
    del lines[0]
    _write(tmp_path, lines)
    with pytest.raises(BundleError, match="line 1"):
        Ledger(tmp_path).append("verdict", passed=True)


def test_missing_ledger_and_unserialisable_data(tmp_path):
    with pytest.raises(BundleError, match="no run ledger"):
        verify_ledger(tmp_path)
    with pytest.raises(TypeError, match="cannot record"):
        Ledger(tmp_path).append("bad", value=object())
    assert verify_ledger(tmp_path) == 0  # nothing half-written
