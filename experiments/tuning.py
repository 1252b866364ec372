"""Candidate recipes tried on validation: the tables scripts' ``--stages tune``.

A candidate ``--recipe`` goes through ``compress`` from the dense net and is scored on the
validation split only; its record is kept beside the report (``<out-dir>/<name>_tuning/``,
committed with the results, since work directories do not outlive a sitting), and the report
lists every candidate, so the choice of the committed recipe can be checked without the test
set. Shared by ``ctsrcnn_tables.py`` (PSNR) and ``paper_tables.py`` (top-1).
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from jointsparse.compress import STAGES, drop_stage_files, reusable_stages
from jointsparse.provenance import machine_summary
from jointsparse.utils import atomic_write_text

TUNE = "tune"  # never a default stage: it runs only when --stages names it
REUSED = "reused.json"  # in a work directory seeded with another run's stages: which, and from where

#: Recipe settings added after tuning records were first written, with their defaults: a setting at
#: its default is left out of the digest, so a record keeps its name (and its work directory) when
#: the recipe schema grows.
DIGEST_OMITS_AT_DEFAULT = {("coding", "raw_float_dtype"): "float32", ("coding", "codebook_dtype"): "float32"}


def recipe_digest(recipe: dict[str, Any]) -> str:
    """Names a recipe (``Recipe.to_dict()``, or that as a record stored it) by its settings, not
    by its file name, which candidates may share."""
    recipe = {section: dict(values) if isinstance(values, dict) else values for section, values in recipe.items()}
    for (section, key), default in DIGEST_OMITS_AT_DEFAULT.items():
        if recipe.get(section, {}).get(key, default) == default:
            recipe.get(section, {}).pop(key, None)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]


def _finished_stages(directory: Path, fingerprint: dict[str, Any]) -> tuple[str, ...]:
    """The finished stages of ``directory`` (a compress work directory) that a run with
    ``fingerprint`` may take: same dense net and settings up to there, ``.done`` on disk."""
    if not (directory / "run.pt").is_file():
        return ()
    kept = reusable_stages(torch.load(directory / "run.pt", weights_only=True), fingerprint, ignore=("tag",))
    return tuple(itertools.takewhile(lambda stage: (directory / f"{stage}.done").is_file(), kept))


def _stamp(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns]


def reuse_trained_stages(work: Path, workdir: Path, fingerprint: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any] | None:
    """Give the run about to start in ``workdir`` the finished stages of an earlier run in
    ``work`` (a tune candidate, or the joint stage) that trained the same way: the same dense net,
    and the same recipe up to the first stage that differs (``fingerprint`` is the new run's
    ``compress.run_fingerprint``). A candidate that changes only fine-tuning then skips the
    retraining, one that changes only quantization costs its codebook stage, one that changes only
    coding trains nothing; and once a candidate becomes the recipe, the joint stage takes its
    finished stages instead of training them again. The seed is not compared: the runs must share
    it (the tables scripts' ``--seed``, 0 unless set).

    ``workdir``'s own stages stand when they go as far as any other run's (a partly trained stage
    then resumes from its checkpoint). Otherwise its files are replaced: its stages past the
    first changed setting are what ``compress`` would run again anyway, and the ones before it
    are the same as the other run's. Only ``.done`` files are copied; ``compress`` resumes from
    them. Returns the stages reused and their source (also when a resumed run finds the ones it
    was seeded with, by ``reused.json``), None when nothing was reused."""
    own = _finished_stages(workdir, fingerprint)
    best: tuple[tuple[str, ...], Path] = (own, workdir)
    for other in sorted([*work.glob(f"{TUNE}-*.work"), work / "joint.work"]):
        if other != workdir:
            kept = _finished_stages(other, fingerprint)
            if len(kept) > len(best[0]):
                best = (kept, other)
    kept, source = best
    if source == workdir:  # its own stages stand; say where they came from if a resumed run was seeded so
        seeded = json.loads((workdir / REUSED).read_text()) if (workdir / REUSED).is_file() else None
        if seeded and all(stage in own and _stamp(workdir / f"{stage}.done") == seeded["stamps"].get(stage) for stage in seeded["stages"]):
            return {"stages": seeded["stages"], "from": seeded["from"]}
        return None  # not seeded, or compress has since run a seeded stage again itself
    workdir.mkdir(parents=True, exist_ok=True)
    drop_stage_files(workdir, STAGES)
    for name in ("run.pt", REUSED):
        (workdir / name).unlink(missing_ok=True)
    for stage in kept:
        shutil.copyfile(source / f"{stage}.done", workdir / f"{stage}.done")
    reused = {"stages": list(kept), "from": source.name}
    stamps = {stage: _stamp(workdir / f"{stage}.done") for stage in kept}  # a stage compress runs again gets a new stamp
    atomic_write_text(workdir / REUSED, json.dumps({**reused, "stamps": stamps}) + "\n")  # a resumed run's record still names the source
    log(f"{workdir.name}: reusing the {', '.join(kept)} stage(s) of {source.name}, which trained the same way")
    return reused


def record_path(directory: Path, recipe_file: Path, recipe: dict[str, Any]) -> tuple[Path, str]:
    """Where a candidate's record goes (``<directory>/<file stem>-<digest>.json``), and the digest."""
    digest = recipe_digest(recipe)
    return directory / f"{recipe_file.stem}-{digest}.json", digest


def already_tried(path: Path, dense_digest: str, required: str) -> bool:
    """A record at ``path`` from the same dense net that holds ``required`` (its decoded scores)."""
    saved = json.loads(path.read_text()) if path.is_file() else {}
    return saved.get("dense_weights_digest") == dense_digest and required in saved


def write_record(path: Path, record: dict[str, Any], *, recipe_file: Path, recipe: dict[str, Any], dense_digest: str, command: str, code: str) -> None:
    """``record`` (a candidate's figures) with what names and reproduces it, written atomically.
    The per-layer rows and the scratch file path stay out of the committed record."""
    for key in ("layers", "file"):
        record.pop(key, None)
    record.update(recipe_file=recipe_file.name, recipe_digest=recipe_digest(recipe), recipe=recipe, dense_weights_digest=dense_digest,
                  command=command, date=datetime.date.today().isoformat(), code=code, machine=machine_summary())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2, default=float) + "\n")


def load_records(directory: Path) -> list[dict[str, Any]]:
    """Every candidate's record in ``directory``, oldest first."""
    paths = sorted(directory.glob("*.json")) if directory.is_dir() else []
    return sorted((json.loads(p.read_text()) for p in paths), key=lambda r: (r["date"], r["recipe_file"]))


def tuning_lines(tried: list[dict[str, Any]], chosen: dict[str, Any] | None, dense_digest: str | None, *, directory: str, score: str,
                 decoded_key: str, stages_key: str, fmt: Callable[[float | None], str],
                 stage_table: Callable[[list[tuple[str, dict[str, float]]]], list[str]]) -> list[str]:
    """The report's section on the candidates ``tried``: what the committed recipe (``chosen``,
    its ``to_dict()``, or None) was chosen from, on validation only. ``score`` names the metric
    ("PSNR (dB)", "top-1 (%)"); a record keeps it decoded per domain under ``decoded_key`` and
    after each compress stage under ``stages_key``."""
    chosen_digest = recipe_digest(chosen) if chosen else None

    def name(r: dict[str, Any]) -> str:
        return f"{r['recipe_file']} ({r['recipe_digest']})" + (" **= joint**" if r["recipe_digest"] == chosen_digest else "")

    def density(value: float | None) -> str:  # None: a file without Winograd-form layers
        return "-" if value is None else f"{value:.3f}"

    lines = ["## Recipes tried on validation", "",
             f"Each candidate recipe through `compress` from a dense net (`--stages tune`), scored on the validation split only; records in "
             f"`{directory}/` beside this report, each with its full recipe and command. A candidate trained from another dense net than this "
             f"report's (dense weights digest {dense_digest}) is marked with its digest: validation figures from different dense nets compare only roughly.", "",
             f"| recipe | date | file bytes | compression | MAC reduction Winograd | spatial density | Winograd density | validation {score} decoded spatial | "
             "decoded Winograd | dense net |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in tried:
        same = "this one" if r["dense_weights_digest"] == dense_digest else r["dense_weights_digest"]
        decoded = r.get(decoded_key, {})  # records written before the decoded files were scored lack it
        lines.append(f"| {name(r)} | {r['date']} | {r['file_bytes']:,} | {r['compression_ratio']:.1f}x | {r['macs_reduction_winograd']:.2f}x | "
                     f"{density(r['density'])} | {density(r['winograd_density'])} | {fmt(decoded.get('spatial'))} | {fmt(decoded.get('winograd'))} | {same} |")
    reused = [f"- {name(r)}: the {', '.join(r['reused']['stages'])} stage(s) taken from `{r['reused']['from']}`, "
              "a run that trained the same way up to there" for r in tried if r.get("reused")]
    if reused:
        lines += ["", "Candidates that changed only later stages reused an earlier run's finished stages (same dense net, same settings):", "", *reused]
    return lines + ["", f"Validation {score} after each stage:", ""] + stage_table([(name(r), r[stages_key]) for r in tried])
