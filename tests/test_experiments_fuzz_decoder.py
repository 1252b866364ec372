"""The adversarial campaign against the .jsz reader (experiments/fuzz_decoder.py): its memory
measurement, its cases, a short campaign in the default suite and a larger one marked slow."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "fuzz_decoder.py"


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_decoder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_decoder"] = module
    spec.loader.exec_module(module)
    return module


def test_the_memory_measurement_sees_torch_tensors(fuzz):
    worker = fuzz.Worker()
    try:
        size = 64 << 20
        result = worker.run(str(size), ("probe",), 300)["probe"]
    finally:
        worker.stop()
    assert result["outcome"] == "ok"
    assert size <= result["peak"] <= size + (8 << 20), result


def test_the_seed_files_hold_every_coding(fuzz):
    from jointsparse.codecs.framing import unpack

    codings = {name: [layer["indices"].get("coding") for layer in unpack(data)[0]["layers"]] for name, data in fuzz.seed_files().items()}
    assert "ctx" in codings["lenet5_ctx"] and "ctx" not in codings["vgg_small_ans"]


def test_cases_are_deterministic_and_pass_the_checksums(fuzz):
    seeds = fuzz.seed_files()
    first = [fuzz.make_case(seeds, 7, index) for index in range(20)]
    assert first == [fuzz.make_case(seeds, 7, index) for index in range(20)]
    reached = 0
    for _, _, _, data in first:
        try:
            fuzz.unframe(data)
            reached += 1
        except ValueError as error:  # a text mutation may break the JSON, never a checksum
            assert "checksum" not in str(error) and "magic" not in str(error), error
    assert reached >= 15


def test_a_short_campaign_finds_only_format_errors_within_the_budget(fuzz):
    # vgg_small: zstd streams; vgg_small_ans: ANS streams, its fc2 positions in the context coding;
    # vgg_small_half: float16 codebooks and raw tensors (format version 4); lenet5_ctx: context-coded
    # indices (format version 5)
    summary = fuzz.run_campaign(200, campaign_seed=1, seed_names=("vgg_small", "vgg_small_ans", "vgg_small_half", "lenet5_ctx"))
    assert summary["failures"] == []
    counts = summary["counts"]
    assert sum(row.get("FormatError", 0) for row in counts.values()) > 200  # the mutations reach the checks
    assert sum(row.get("ok", 0) for row in counts.values()) > 50  # and some files still decode


@pytest.mark.slow
def test_a_larger_campaign_over_every_seed_file(fuzz):
    summary = fuzz.run_campaign(2000, campaign_seed=2)
    assert summary["failures"] == [], summary["failures"][:10]
