"""experiments/mask_structure.py (issue 15): the oracle bounds on small maps, and the script on a
committed file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import mask_structure  # noqa: E402


def test_an_iid_map_has_no_structure_to_exploit():
    rng = np.random.default_rng(0)
    matrix = (rng.random((256, 512)) < 0.05).astype(np.float64)
    order0 = mask_structure.order0_bits(matrix)
    assert 0.97 < mask_structure.row_col_oracle_bits(matrix) / order0 <= 1.0
    assert 0.97 < mask_structure.group_oracle_bits(matrix, 16) / order0 < 1.03
    assert 0.999 < mask_structure.neighbour_oracle_bits(matrix) / order0 <= 1.0


def test_dense_rows_and_whole_groups_are_found():
    rng = np.random.default_rng(1)
    rows = (rng.random((256, 1)) < 0.2) * (rng.random((256, 512)) < 0.5)  # a fifth of the rows hold every one
    assert mask_structure.row_col_oracle_bits(rows.astype(np.float64)) < 0.75 * mask_structure.order0_bits(rows.astype(np.float64))
    groups = np.repeat(rng.random((256, 32)) < 0.05, 16, axis=1).astype(np.float64)  # each group all ones or all zeros
    assert mask_structure.group_oracle_bits(groups, 16) < 0.1 * mask_structure.order0_bits(groups)
    # runs along the rows and filters that prune alike: the neighbours see both
    assert mask_structure.neighbour_oracle_bits(groups) < 0.5 * mask_structure.order0_bits(groups)
    alike = np.repeat(rng.random((32, 512)) < 0.05, 8, axis=0).astype(np.float64)  # each row repeated 8 times
    assert mask_structure.neighbour_oracle_bits(alike) < 0.3 * mask_structure.order0_bits(alike)


def test_index_oracle_sees_neighbours_that_share_values_and_nothing_in_iid_ones():
    rng = np.random.default_rng(2)
    rows = np.repeat(np.arange(500), 40)
    iid = rng.integers(0, 32, rows.size)
    order0, given = mask_structure.previous_index_oracle_bits(iid, rows)
    assert 0.95 < given / order0 <= 1.0  # the oracle's own overfitting on 33 x 32 counts, nothing more
    runs = np.repeat(rng.integers(0, 32, rows.size // 4), 4)  # each value four times in a row
    order0, given = mask_structure.previous_index_oracle_bits(runs, rows)
    assert given < 0.5 * order0
    assert mask_structure.previous_index_oracle_bits(np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == (0.0, 0.0)


def test_the_script_totals_the_files_position_bytes(capsys):
    from jointsparse.info import info_payload

    path = ROOT / "experiments" / "results" / "ctsrcnn.jsz"
    assert mask_structure.main([str(path)]) == 0
    total = sum(layer["position_bytes"] for layer in info_payload(str(path), None)["report"]["layers"] if layer.get("position_bytes"))
    out = capsys.readouterr().out
    assert f"| total | | | {total:,} |" in out
    indices = sum(layer["index_bytes"] for layer in info_payload(str(path), None)["report"]["layers"])
    assert f"| total | | {indices:,} |" in out


@pytest.mark.parametrize("args, message", [(["--group", "conv2.weight=7"], "not a multiple of --group 7"), (["--group", "conv2.weight"], "error:")])
def test_bad_arguments_exit_2_with_one_line(capsys, args, message):
    assert mask_structure.main([str(ROOT / "experiments" / "results" / "ctsrcnn.jsz"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_missing_file_exits_2(tmp_path, capsys):
    assert mask_structure.main([str(tmp_path / "none.jsz")]) == 2
    assert capsys.readouterr().err.startswith("error:")
