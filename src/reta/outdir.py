"""Output folders the tool owns: every command claims its --out before its first write.

A folder is "ours" only if it holds the marker `OUT/.reta-artifact.json`
({"kind": KIND, "version": 1, "run": RUN_RECORD-or-null}); an artifact is finished only if it
holds its kind's final file (`KINDS[kind].finished`, written last). Every file a kind writes
matches one of its `KINDS[kind].owned` glob patterns (relative to OUT), and its temporaries are
`io.atomic_path` names (`.reta-tmp.<target>.<random>.tmp` beside the target): nothing else
under OUT is ever deleted or replaced, whatever the flags.

    claim(out, kind, inputs=(), overwrite=False, run_record=None) -> Path

Call it after *all* validation (config ranges, data, teachers, IPC against the classes), right
before the first write, and on one process only (rank 0, then a barrier): a failed validation
then leaves nothing behind, and a corrected command just works. It refuses, with one-line
RetaError naming the folder and the fix:
  - `out` equal to or inside any of `inputs` (dataset roots, teacher, distilled, label folders;
    symlinks resolved);
  - `out`, or the first existing folder above it, being a file;
  - a non-empty folder without the marker (unless adopted, below), or whose marker names another kind;
  - a finished artifact of this kind, unless `overwrite` (or, for a `rerun` kind, the same `run_record`);
  - `overwrite` on our own folder when one of `inputs` lies inside it;
  - for a resumable kind, an unfinished run whose stored `run_record` differs from the given one,
    unless `overwrite`.
Otherwise it returns `out`, created, with the marker written atomically:
  - an empty or new folder: the marker is written (with `run_record`);
  - `overwrite=True` on our own folder: every owned file (and temporary) is removed first, so no
    image or shard of the old artifact can be mistaken for part of the new one;
  - an unfinished artifact of a resumable kind with the same `run_record`: kept as it is (resume);
  - an unfinished artifact of a non-resumable kind: its owned files are removed (nothing finished
    is lost), and the command starts over;
  - a finished artifact of a `rerun` kind (run, demo, bench) with the same `run_record`: kept as it
    is; the command reuses every finished part and rebuilds only its summaries from them;
  - a folder without the marker that holds nothing but the kind's own files, one of them a file
    only reta writes (`KINDS[kind].adopt`, e.g. a nested artifact's marker): written by a reta of
    before markers, so it is adopted (marker written) and continued like one with the same record.
Kinds that nest other artifacts (evaluation, run, demo, bench) own the nested files too, markers
included, so --overwrite clears them; each nested artifact is still claimed with its own kind.
`run_record` must hold exactly what decides whether earlier partial output may be reused
(config, input hashes), JSON-able; no versions or timestamps, or every rerun would be refused.

    owned_paths(out, kind, patterns=None) -> list[Path]
    remove_owned(out, kind, patterns=None) -> None
    remove_temporaries(out, kind) -> None

The files (and temporaries) of `kind` that exist under `out`, restricted to `patterns` (a subset
of the kind's own) when given; `remove_owned` deletes them and then any folder those patterns
name that is left empty. A command cleans up with these, never with a glob of its own.
`is_finished(out, kind)` tells whether the final file is there; `dataset_inputs(spec, data_root)`
gives the folders a `--data` spec reads, for `inputs`.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

from reta.errors import RetaError

MARKER = ".reta-artifact.json"
VERSION = 1
TMP_PREFIX = ".reta-tmp."  # io.atomic_path's temporaries: .reta-tmp.<target name>.<random>.tmp
TMP_SUFFIX = ".tmp"


@dataclass(frozen=True)
class Kind:
    command: str  # the command that writes it, for messages
    finished: str  # written last: its presence means the artifact is complete
    owned: tuple[str, ...]  # every file the command writes, as globs relative to OUT
    resumable: bool = False  # an unfinished one with the same run record is continued, not restarted
    # A finished one with the same run record is continued too (requires resumable): its final
    # files are summaries rebuilt from parts that are reused, so rerunning the command loses nothing.
    rerun: bool = False
    # Files only reta writes: a folder without the marker holding one of them, and nothing the kind
    # does not own, was written by a reta of before markers and is adopted.
    adopt: tuple[str, ...] = ()


KINDS: dict[str, Kind] = {
    "teacher": Kind("squeeze", "meta.json", ("weights.safetensors", "meta.json", "checkpoint.safetensors"),
                    resumable=True),
    "distilled": Kind("distill", "manifest.json", ("manifest.json", "images/*/*.png",
                                                   "init/class_*.safetensors", "progress/group_*.json"),
                      resumable=True),
    "labels": Kind("relabel", "manifest.json", ("manifest.json", "labels-*.safetensors"), resumable=True),
    "report": Kind("report", "report.md", ("report.md", "betti_curves.png", "diagrams.png", "anchors.png")),
    "ddranking": Kind("export-ddranking", "config.yaml", ("config.yaml", "run_ddranking.py", "images/*/*.png",
                                                         "teacher/*/*/ckpt_best.pt", "real/md5.json", "real/*/*")),
}


def _inside(folder: str, kind: str, marker: bool = True) -> tuple[str, ...]:
    """The files of a `kind` artifact written at `folder` inside another kind's OUT."""
    return tuple(f"{folder}/{p}" for p in ((MARKER,) if marker else ()) + KINDS[kind].owned)


BASELINE = "baseline-random"  # the random subset beside an evaluated set (reta.pipeline.BASELINE_DIR)
KINDS["evaluation"] = Kind("evaluate", "result.json", ("config.json", "result.json", *_inside(BASELINE, "distilled")))
KINDS["run"] = Kind(
    "run", "report.md",
    ("config.json", "eval-*.json", "result.json", "grid.png", "report.md", *_inside("teacher", "teacher"),
     *_inside("distilled", "distilled"), *_inside(BASELINE, "distilled"), f"{BASELINE}/eval-*.json",
     *_inside("topology", "report", marker=False)),  # topology_report writes no marker of its own
    resumable=True, rerun=True, adopt=(f"teacher/{MARKER}", f"distilled/{MARKER}"))
KINDS["demo"] = Kind(
    "demo", "report.md",
    ("demo_config.json", "distilled_grid.png", "top1_vs_ipc.png", "report.md", *_inside("teacher", "teacher"),
     *_inside("ipc*/*/distilled", "distilled"), "ipc*/*/eval-*.json", "ipc*/*/result.json",
     *_inside("ipc*/*/report", "report", marker=False)),
    resumable=True, rerun=True)
KINDS["bench"] = Kind(
    "bench", "report.md",
    ("rows/*__seed*__*.json", "report.md",  # rows: reta.bench.row_file; summaries: bench.results_name
     *(f"*-{tier}{split}.json" for tier in ("quick", "full") for split in ("", "-holdout")),
     *_inside("*/seed*/distilled", "distilled"), "*/seed*/eval-*.json"),
    resumable=True, rerun=True, adopt=(f"*/seed*/distilled/{MARKER}",))


def _kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; add it to reta.outdir.KINDS")
    return KINDS[kind]


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def read_marker(out: Path) -> dict | None:
    """The marker of `out` as a dict, or None if there is none; a damaged one is refused."""
    path = Path(out) / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        marker = None
    if not isinstance(marker, dict) or not isinstance(marker.get("kind"), str):
        raise RetaError(f"{path}: damaged reta marker; choose another --out, or delete {path} if the folder "
                        f"holds nothing you need")
    return marker


def is_finished(out: Path, kind: str) -> bool:
    return (Path(out) / _kind(kind).finished).is_file()


def _temporary_target(name: str) -> str | None:
    """The file name a reta temporary was going to become, or None for any other name."""
    if not (name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)):
        return None
    target, _, _random = name[len(TMP_PREFIX):-len(TMP_SUFFIX)].rpartition(".")
    return target or None


def owned_paths(out: Path, kind: str, patterns: Sequence[str] | None = None) -> list[Path]:
    """Existing files under `out` that `kind` writes (and their reta temporaries), sorted."""
    own = _kind(kind).owned
    patterns = own if patterns is None else tuple(patterns)
    foreign = [p for p in patterns if p not in own]
    if foreign:
        raise ValueError(f"{foreign} are not files a {kind} writes ({own})")
    out = Path(out)
    found: set[Path] = set()
    for pattern in patterns:
        pure = PurePosixPath(pattern)
        found.update(p for p in out.glob(pattern) if p.is_file() and not p.is_symlink())
        parent = "" if str(pure.parent) == "." else str(pure.parent) + "/"
        for tmp in out.glob(f"{parent}{TMP_PREFIX}*{TMP_SUFFIX}"):
            target = _temporary_target(tmp.name)
            if target and fnmatch.fnmatchcase(target, pure.name) and tmp.is_file():
                found.add(tmp)
    return sorted(found)


def _remove(paths: Sequence[Path], out: Path, patterns: Sequence[str]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
    # Folders the patterns name (e.g. init/, images/00003/), deepest first, only when left empty.
    folders: set[Path] = set()
    for pattern in patterns:
        for depth in range(len(PurePosixPath(pattern).parts) - 1, 0, -1):
            folders.update(p for p in out.glob("/".join(PurePosixPath(pattern).parts[:depth])) if p.is_dir())
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def remove_owned(out: Path, kind: str, patterns: Sequence[str] | None = None) -> None:
    """Delete what `owned_paths` lists, then the folders those patterns name if left empty."""
    patterns = _kind(kind).owned if patterns is None else tuple(patterns)
    _remove(owned_paths(out, kind, patterns), Path(out), patterns)


def remove_temporaries(out: Path, kind: str) -> None:
    """Delete the reta temporaries of writes killed mid-way, and nothing else."""
    out = Path(out)
    _remove([p for p in owned_paths(out, kind) if _temporary_target(p.name)], out, ())


def dataset_inputs(spec: str, data_root: str | None = None) -> list[Path]:
    """The folders a `--data` spec reads, so that no output lands inside a dataset."""
    from reta.data.sources import NAMED_LAYOUTS

    kind, sep, rest = spec.partition(":")
    if sep and kind in ("npz", "imagefolder"):
        return [Path(rest)]
    root = Path(data_root or os.environ.get("RETA_DATA_ROOT", "") or ".")
    return [root / rel for _layout, rel in NAMED_LAYOUTS.get(spec, ()) if (root / rel).exists()]


def _check_location(out: Path, inputs: Sequence[Path]) -> None:
    resolved = out.resolve()
    for inp in inputs:
        if _within(resolved, Path(inp).resolve()):
            where = "is" if resolved == Path(inp).resolve() else "lies inside"
            raise RetaError(f"--out {out} {where} the input folder {inp}; write the output outside every input")
    if out.exists() and not out.is_dir():
        raise RetaError(f"--out {out} is an existing file, not a folder; choose a folder path")
    above = next((p for p in out.absolute().parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise RetaError(f"--out {out}: {above} is a file, not a folder; choose a folder path")


def _written_before_markers(out: Path, kind: str) -> bool:
    """Whether `out` (no marker) holds only `kind`'s files, one of them a file only reta writes."""
    spec = _kind(kind)
    if not spec.adopt:
        return False
    files = {p for p in out.rglob("*") if not p.is_dir()}
    signs = [p for p in owned_paths(out, kind, spec.adopt) if _temporary_target(p.name) is None]
    return bool(signs) and files <= set(owned_paths(out, kind))


def _write_marker(out: Path, kind: str, run_record: dict | None) -> None:
    from reta import io

    out.mkdir(parents=True, exist_ok=True)
    io.write_json(out / MARKER, {"kind": kind, "version": VERSION, "run": io.to_jsonable(run_record)})


def claim(out: Path, kind: str, inputs: Sequence[Path] = (), overwrite: bool = False,
          run_record: dict | None = None) -> Path:
    """Make `out` this command's folder or refuse with one line; see the module docstring."""
    from reta import io

    spec = _kind(kind)
    out = Path(out)
    _check_location(out, inputs)
    if not (out.is_dir() and any(out.iterdir())):
        _write_marker(out, kind, run_record)
        return out
    record = json.loads(json.dumps(io.to_jsonable(run_record)))
    marker = read_marker(out)
    adopted = marker is None and _written_before_markers(out, kind)
    if marker is None and not adopted:
        raise RetaError(f"--out {out} is not empty and was not written by `reta {spec.command}`; "
                        f"choose a new or empty folder (nothing in it was changed)")
    if adopted:
        marker = {"kind": kind, "run": record}
    if marker["kind"] != kind:
        raise RetaError(f"--out {out} holds a reta {marker['kind']} artifact, not a {kind}; choose another --out")
    same_run = marker.get("run") == record
    if overwrite:
        held = next((inp for inp in inputs if _within(Path(inp).resolve(), out.resolve())), None)
        if held is not None:
            raise RetaError(f"--out {out} holds the input {held}, which --overwrite would delete; "
                            f"choose another --out, or move the input out of it first")
        remove_owned(out, kind)
    elif is_finished(out, kind) and not (spec.rerun and same_run):
        raise RetaError(f"--out {out} already holds a finished {kind} ({spec.finished})"
                        f"{' made with other settings' if spec.rerun else ''}; pass --overwrite to replace it, "
                        f"or choose another --out")
    elif spec.resumable:
        if not same_run:
            raise RetaError(f"--out {out} holds an unfinished run with other settings; rerun that command to resume "
                            f"it, pass --overwrite to start over, or choose another --out")
        if not adopted:
            return out
    else:
        remove_owned(out, kind)
    _write_marker(out, kind, run_record)
    return out
