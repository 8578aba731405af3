"""Reports: result tables, image grids and RETA's topology/retrieval panels, written as Markdown + PNG."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from reta import io, topology

if TYPE_CHECKING:
    from reta.data.dataset import ImageSet
    from reta.teacher import Teacher


def image_grid(images_uint8: torch.Tensor, nrow: int, path: Path, min_cell: int = 48) -> Path:
    """Save (n,3,H,W) uint8 images as one PNG grid, upscaled (nearest) so small images stay visible."""
    from torchvision.utils import make_grid

    grid = make_grid(images_uint8.float() / 255.0, nrow=nrow, padding=1, pad_value=1.0)
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    scale = max(1, min_cell // images_uint8.shape[-1])
    im = Image.fromarray(arr)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    with io.atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return path


def _pct(v, signed=False, digits=2):
    return "–" if v is None else (f"{100 * v:+.{digits}f}" if signed else f"{100 * v:.{digits}f}")


def _mean_std(pair, bold=False):
    if pair is None:
        return "–"
    text = f"{100 * pair[0]:.2f} ± {100 * pair[1]:.2f}"
    return f"**{text}**" if bold else text


def _delta_paired(row):
    if row.get("delta_fadrm") is None:
        return "–"
    std = row.get("delta_fadrm_std")
    return _pct(row["delta_fadrm"], signed=True) + (f" ± {100 * std:.2f}" if std is not None else "")


def _shares(row):
    if not (row.get("drc_share") or row.get("pta_share")):
        return "–"
    return f"{_pct(row.get('drc_share'), digits=1)}% / {_pct(row.get('pta_share'), digits=1)}%"


def _number(key, fmt):
    return lambda row: "–" if row.get(key) is None else format(row[key], fmt)


# (header, row keys that must hold a value in some row for the column to be shown, cell)
COLUMNS = [
    ("method", ("method",), lambda r: str(r["method"])),
    ("student", ("student",), lambda r: str(r.get("student") or "–")),
    ("top-1 final (mean ± std)", ("top1",), lambda r: _mean_std(r.get("top1"), bold=True)),
    ("Δ vs random", ("delta_random",), lambda r: _pct(r.get("delta_random"), signed=True)),
    ("Δ vs FADRM (± paired std)", ("delta_fadrm",), _delta_paired),
    ("hard-label top-1", ("hard",), lambda r: _mean_std(r.get("hard"))),
    ("HLR", ("hlr",), lambda r: _pct(r.get("hlr"))),
    ("IOR", ("ior",), lambda r: _pct(r.get("ior"), signed=True)),
    ("LRS ×100", ("lrs",), lambda r: _pct(r.get("lrs"))),
    ("best-epoch ({split}-selected)", ("best",), lambda r: _pct(r.get("best"))),
    ("s / image", ("s_per_image",), _number("s_per_image", ".3f")),
    ("shared anchors", ("shared_anchor",), _number("shared_anchor", ".2f")),
    ("DRC / PTA share of recover", ("drc_share", "pta_share"), _shares),
    ("recover time / FADRM", ("time_vs_fadrm",), _number("time_vs_fadrm", ".2f")),
    ("seconds", ("seconds",), _number("seconds", ".0f")),
]


def results_table(rows: list[dict]) -> str:
    """The one results table (CLI, run/demo reports, BENCHMARKS.md), as Markdown.

    Rows are dicts with any of the keys named in COLUMNS (accuracies as fractions, `top1` and
    `hard` as (mean, std)) and `split`, the split they were scored on (default test), which the
    best-epoch header names since that column is selected on it; a column no row fills is left
    out, and so is `student` when every row has the same one.
    """
    students = {r.get("student") for r in rows}
    splits = sorted({r.get("split") or "test" for r in rows})
    cols = [c for c in COLUMNS if any(r.get(k) is not None for r in rows for k in c[1])
            and not (c[0] == "student" and len(students) < 2)]
    headers = [c[0].format(split="/".join(splits)) for c in cols]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(c[2](r) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}%"


def answer_line(result: dict) -> str:
    """The one sentence a reader wants first: the set's top-1 against random real images and the teacher."""
    n_seeds = len(result["seeds"])
    line = (f"**{result['method']} at IPC {result['ipc']}: {_pm(result['top1_final_mean'], result['top1_final_std'])} "
            f"top-1** ({result['student']} student, final epoch, {n_seeds} seed{'s' if n_seeds > 1 else ''})")
    base = result.get("baseline_random")
    if base:
        line += (f" vs {_pm(base['top1_final_mean'], base['top1_final_std'])} for {result['ipc']} random real "
                 f"images per class ({100 * (result['top1_final_mean'] - base['top1_final_mean']):+.1f} points)")
    else:
        line += " (no random baseline: rerun with --baseline random)"
    return line + f" and {100 * result['teacher_test_top1']:.1f}% for the teacher trained on all the training data."


def run_report(out: Path, result: dict, images: ImageSet, table: str, settings: dict[str, dict],
               topology: Path | None = None) -> Path:
    """`out/report.md`: the answer, the image grid, then the table, settings and files."""
    ipc = int(result["ipc"])
    per_class, classes = min(ipc, 10), min(images.info.num_classes, 10)
    picks = [c * ipc + i for c in range(classes) for i in range(per_class)]
    image_grid(images.load(picks), nrow=per_class, path=out / "grid.png")
    split = result.get("split", "test")
    md = [
        f"# reta run: {result['method']}, IPC {ipc}, {images.info.name}", "",
        answer_line(result), "",
        "![distilled images](grid.png)", "",
        f"Rows: classes {', '.join(images.info.classes[:classes])}"
        + (f" (first {classes} of {images.info.num_classes})" if classes < images.info.num_classes else "")
        + f"; columns: {'the first ' + str(per_class) + ' of ' if per_class < ipc else ''}the {ipc} images per class.", "",
        "## Details", "",
        f"Top-1 on the {split} split after the last student epoch, mean ± sample std over student seeds; the "
        f"best-epoch column is selected on the {split} split, shown only for comparison with papers.", "",
        table, "",
        "Settings (the resolved configs are in config.json):", "",
        *(f"- {name}: " + ", ".join(f"{k}={v}" for k, v in sorted(values.items())) for name, values in settings.items()),
        "",
        f"Files: `distilled/` (the images and manifest.json), `result.json`"
        + (", `baseline-random/` (the random subset, as `reta distill --method random` writes it)"
           if result.get("baseline_random") else "") + ".",
    ]
    if topology is not None:
        md += ["", "## Topology and anchors", "",
               f"Betti curves, persistence diagrams and DRC anchors of this set: "
               f"[{topology.relative_to(out).as_posix()}]({topology.relative_to(out).as_posix()})"]
    path = out / "report.md"
    io.write_bytes(path, ("\n".join(md) + "\n").encode())
    return path


# -- topology report (RETA PTA/DRC diagnostics) --------------------------------------------------

BETTI_THRESHOLDS = 200  # filtration values s = i/200, i = 0..199, i.e. [0, 1) (bars are half-open [b, d))


def cloud_topology(z: torch.Tensor, kappa: float, k: int, infinite: str = "one",
                   thresholds: torch.Tensor | None = None) -> dict:
    """Diagrams, Betti curves and H1 bar counts of one feature cloud z [n, d] under RETA's PTA filtration.

    Same filtration as the PTA loss (`topology.diagrams`: mutual k-NN, f = D / kappa, essential bars
    by `infinite`). `h1_essential` counts H1 bars that never die inside the graph, whatever the
    policy does with them afterwards (with "drop" they are absent from the diagram).
    Returns {"h0", "h1" ([m, 2] float64 numpy), "beta0", "beta1" ([t] numpy), "h1_finite", "h1_essential"}.
    """

    if thresholds is None:
        thresholds = torch.arange(BETTI_THRESHOLDS, dtype=torch.float64) / BETTI_THRESHOLDS
    dist = topology.squared_distances(z.detach().double().cpu())
    pairing = topology.persistence_pairing(dist, kappa, k)
    h0, h1 = topology.diagrams_from_pairing(dist, kappa, pairing, infinite)
    b0, b1 = topology.betti_curves(h0, h1, thresholds.to(h0.dtype))
    return {"h0": h0.numpy(), "h1": h1.numpy(), "beta0": b0.numpy(), "beta1": b1.numpy(),
            "h1_finite": len(pairing.h1_birth), "h1_essential": len(pairing.h1_essential_birth)}


def _features(model: torch.nn.Module, info, images_uint8: torch.Tensor, batch: int = 256) -> torch.Tensor:
    from reta.retrieval.pool import normalised_features

    dev = next(model.parameters()).device
    out = [normalised_features(model, info.normalise(images_uint8[i:i + batch].to(dev))).cpu()
           for i in range(0, len(images_uint8), batch)]
    return torch.cat(out) if out else torch.zeros(0, 0)


def _share(ess: int, fin: int) -> str:
    return f"{100 * ess / (ess + fin):.0f}%" if ess + fin else "n/a"


def _save_figure(fig, path: Path) -> Path:
    """Write a matplotlib Figure atomically as PNG (Agg canvas, no pyplot state), then free it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    fig.clear()
    return path


def _panel_grid(n_classes: int, per_class: int, width: float = 13.0, height: float = 2.5):
    from matplotlib.figure import Figure

    classes_per_row = max(1, 4 // per_class)
    rows = -(-n_classes // classes_per_row)
    fig = Figure(figsize=(width, height * rows))
    # Fixed margins: constrained layout costs seconds for dozens of panels.
    fig.subplots_adjust(left=0.04, right=0.99, top=1 - 0.3 / (height * rows), bottom=0.45 / (height * rows),
                        wspace=0.3, hspace=0.55)
    axes = fig.subplots(rows, classes_per_row * per_class, squeeze=False)
    for ax in axes.flat[n_classes * per_class:]:
        ax.set_visible(False)
    return fig, [axes.flat[i * per_class:(i + 1) * per_class] for i in range(n_classes)]


def _betti_figure(stats: list[dict], thresholds: np.ndarray, path: Path) -> Path:
    from matplotlib.ticker import MaxNLocator

    fig, panels = _panel_grid(len(stats), 2)
    for s, (ax0, ax1) in zip(stats, panels):
        for ax, key, name in ((ax0, "beta0", "β0"), (ax1, "beta1", "β1")):
            real = s["real_" + key]
            if len(real):
                ax.fill_between(thresholds, real.min(0), real.max(0), step="post", color="tab:blue", alpha=0.2, lw=0)
                ax.step(thresholds, real.mean(0), where="post", color="tab:blue", label="real (mean of subsets)")
            ax.step(thresholds, s["syn"][key], where="post", color="tab:orange", label="synthetic")
            ax.set_title(f"class {s['class']} ({s['name']}): {name}", fontsize=9)
            ax.set_xlim(0, 1)
            ax.set_xticks([0, 0.25, 0.5, 0.75, 1])
            top = max([1, int(s["syn"][key].max(initial=0)), int(real.max(initial=0))])
            ax.set_ylim(0, top * 1.08)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
            ax.set_xlabel("filtration value D/κ_c", fontsize=7)
    panels[0][0].legend(fontsize=7, loc="upper right")
    return _save_figure(fig, path)


def _diagram_figure(stats: list[dict], path: Path) -> Path:
    fig, panels = _panel_grid(len(stats), 2)
    for s, axes in zip(stats, panels):
        for ax, which, dg in zip(axes, ("real", "synthetic"), (s["real_first"], s["syn"])):
            ax.plot([0, 1.05], [0, 1.05], color="0.6", lw=0.8)
            if dg is not None:
                ax.scatter(dg["h0"][:, 0], dg["h0"][:, 1], s=12, color="tab:blue", label="H0")
                ax.scatter(dg["h1"][:, 0], dg["h1"][:, 1], s=16, marker="^", color="tab:red", label="H1")
            ax.set_xlim(-0.03, 1.05)
            ax.set_ylim(-0.03, 1.08)
            ax.set_xticks([0, 0.5, 1])
            ax.set_yticks([0, 0.5, 1])
            ax.set_title(f"class {s['class']} ({s['name']}): {which}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("birth", fontsize=7)
            ax.set_ylabel("death", fontsize=7)
    panels[0][0].legend(fontsize=7, loc="lower right")
    return _save_figure(fig, path)


def _anchor_figure(rows_per_class: list[tuple[str, list[str], list[torch.Tensor]]], path: Path) -> Path:
    """One panel per class: a montage whose rows are (labelled) lists of uint8 (3,H,W) thumbnails."""
    from matplotlib.figure import Figure

    n = len(rows_per_class)
    per_row = 2
    rows = -(-n // per_row)
    n_lines = max(len(r[1]) for r in rows_per_class)
    n_cols = max(len(line) for r in rows_per_class for line in r[2])
    height = (0.55 * n_lines + 0.45) * rows
    fig = Figure(figsize=(per_row * (0.55 * n_cols + 1.3), height))
    fig.subplots_adjust(left=0.12, right=0.99, top=1 - 0.25 / height, bottom=0.2 / height, wspace=0.3,
                        hspace=0.45 / (0.55 * n_lines))
    axes = fig.subplots(rows, per_row, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (title, labels, lines) in zip(axes.flat, rows_per_class):
        side = lines[0].shape[-1]
        cols = max(len(line) for line in lines)
        canvas = np.full((len(lines) * (side + 1), cols * (side + 1), 3), 255, dtype=np.uint8)
        for r, line in enumerate(lines):
            for c, img in enumerate(line):
                canvas[r * (side + 1):r * (side + 1) + side, c * (side + 1):c * (side + 1) + side] = \
                    img.permute(1, 2, 0).numpy()
        ax.imshow(canvas, interpolation="nearest")
        ax.set_yticks([r * (side + 1) + side / 2 for r in range(len(lines))], labels, fontsize=7)
        ax.set_xticks([c * (side + 1) + side / 2 for c in range(cols)], [str(c) for c in range(cols)], fontsize=6)
        ax.set_title(title, fontsize=9)
    return _save_figure(fig, path)


def topology_report(distilled_dir: Path, teacher: Teacher, train: ImageSet, out_dir: Path, max_classes: int = 10,
                    real_subsets: int = 5, max_real: int = 1000, max_slots: int = 10, seed: int = 0) -> Path:
    """Write `out_dir/report.md` + PNGs on a distilled set's topology and DRC anchors; returns the .md path.

    Per class (the first `max_classes`): Betti curves and persistence diagrams of the synthetic
    images' features vs real ones, under the run's PTA filtration (`config.pta.k`,
    `infinite_bars`; kappa_c from the class's real features). Features are the teacher's
    L2-normalised penultimate features. Real images are the class's training images outside the
    teacher's held-out split (at most `max_real`, seeded); the real curves are the mean (band:
    min-max) of `real_subsets` random subsets of the synthetic cloud's size (the PTA reference's
    construction). Also: the anchors DRC retrieved per stage, and the manifest's shared-anchor
    fraction, DRC/PTA time shares and topology loss per stage.
    """
    from reta.config import PTAConfig
    from reta.data.dataset import split_holdout
    from reta.distilled import read_distilled
    from reta.runtime import derive_seed

    distilled_dir, out_dir = Path(distilled_dir), Path(out_dir)
    syn, manifest = read_distilled(distilled_dir, expect=train.info)
    info = train.info
    ipc = int(manifest["ipc"])
    cfg = manifest.get("config", {})
    pta_cfg = {**vars(PTAConfig()), **cfg.get("pta", {})}
    k, infinite = int(pta_cfg["k"]), str(pta_cfg["infinite_bars"])
    pta_on = float(manifest.get("pta_share") or 0.0) > 0  # the method computed a topology term
    method = manifest.get("method", cfg.get("method", "unknown"))
    classes = list(range(min(max_classes, info.num_classes)))

    fit, _ = split_holdout(train, *teacher.holdout)
    notes = []
    hold = manifest.get("holdout")
    if hold is not None and (float(hold["fraction"]), int(hold["seed"])) != teacher.holdout:
        notes.append(f"The run excluded held-out split {hold}; this teacher's is {teacher.holdout}: "
                     f"real features use the teacher's held-out split.")
    if manifest.get("data_hash") not in (None, train.content_hash()):
        notes.append("**The training data differ from the run's (data hash mismatch): anchor thumbnails may "
                     "not be the images DRC retrieved.**")
    run_teachers = manifest.get("teacher_sha256") or []
    if run_teachers and run_teachers[0] != teacher.weights_hash:
        notes.append("The features come from another teacher than the run's first teacher (which gave PTA/DRC "
                     "their features); curves show this teacher's view.")

    thresholds = torch.arange(BETTI_THRESHOLDS, dtype=torch.float64) / BETTI_THRESHOLDS
    stats = []
    for c in classes:
        idx = fit.indices_of_class(c)
        rng = np.random.default_rng(derive_seed(seed, "report-real", c) % (2**32))
        if len(idx) > max_real:
            idx = np.sort(rng.choice(idx, size=max_real, replace=False))
        z_real = _features(teacher.model, info, fit.load(idx)) if len(idx) else torch.zeros(0, 0)
        z_syn = _features(teacher.model, info, syn.load(np.arange(c * ipc, (c + 1) * ipc)))
        kappa = topology.class_cutoff(z_real)  # 1.0 for fewer than two real points
        syn_top = cloud_topology(z_syn, kappa, k, infinite, thresholds)
        n = min(ipc, len(idx))
        real_runs = []
        if n:
            gen = torch.Generator().manual_seed(derive_seed(seed, "report-subsets", c))
            for _ in range(real_subsets):
                pick = torch.randperm(len(idx), generator=gen)[:n]
                real_runs.append(cloud_topology(z_real[pick], kappa, k, infinite, thresholds))
        stats.append({
            "class": c, "name": info.classes[c], "n_real": len(idx), "kappa": kappa, "syn": syn_top,
            "real_first": real_runs[0] if real_runs else None,
            "real_beta0": np.stack([r["beta0"] for r in real_runs]) if real_runs else np.zeros((0, len(thresholds))),
            "real_beta1": np.stack([r["beta1"] for r in real_runs]) if real_runs else np.zeros((0, len(thresholds))),
            "real_h1_fin": sum(r["h1_finite"] for r in real_runs),
            "real_h1_ess": sum(r["h1_essential"] for r in real_runs),
            "real_runs": len(real_runs),
        })

    out_dir.mkdir(parents=True, exist_ok=True)
    t_np = thresholds.numpy()
    _betti_figure(stats, t_np, out_dir / "betti_curves.png")
    _diagram_figure(stats, out_dir / "diagrams.png")

    selections = manifest.get("drc_selections") or []
    anchor_lines = []
    if selections:
        by_slot = {(r["stage"], r["slot"]): r["train_index"] for r in selections}
        stages = sorted({r["stage"] for r in selections})
        panels = []
        for c in classes:
            slots = list(range(min(ipc, max_slots)))
            lines, labels = [syn.load(np.arange(c * ipc, c * ipc + len(slots)))], ["distilled"]
            for st in stages:
                picks = [by_slot.get((st, c * ipc + i)) for i in slots]
                if any(p is None for p in picks):
                    continue
                lines.append(train.load(np.asarray(picks)))  # train_index indexes the full training split
                labels.append(f"stage {st} anchor")
            title = f"class {c} ({info.classes[c]})" + (f", slots 0-{len(slots) - 1} of {ipc}" if ipc > len(slots) else "")
            panels.append((title, labels, lines))
            distinct = [len({by_slot[(st, c * ipc + i)] for i in range(ipc) if (st, c * ipc + i) in by_slot})
                        for st in stages]
            anchor_lines.append(f"| {c} ({info.classes[c]}) | " + " | ".join(f"{d}/{ipc}" for d in distinct) + " |")
        _anchor_figure(panels, out_dir / "anchors.png")
        anchor_md = [
            "Rows: the final distilled images, then the training image DRC retrieved for each slot at each "
            "residual connection (injected as (1−α)·anchor after stage s). Columns: IPC slots.", "",
            "![anchors](anchors.png)", "",
            "Distinct anchors per class and connection (a value below IPC means images of the class shared an anchor):", "",
            "| class | " + " | ".join(f"stage {st}" for st in stages) + " |",
            "|---|" + "---|" * len(stages),
            *anchor_lines,
        ]
    else:
        anchor_md = ["Anchors: fixed init patches (FADRM). This run made no DRC retrievals "
                     "(every residual connection re-injects the image's own initial patch)."]

    # -- summary from the manifest --
    def pct(v):
        return "n/a" if v is None else f"{100 * float(v):.1f}%"

    saf = manifest.get("shared_anchor_fraction")
    stage_topo: dict[int, list[float]] = {}
    for g in manifest.get("groups", []):
        for s_i, st in enumerate(g.get("stages", [])):
            if "topo" in st:
                stage_topo.setdefault(s_i, []).append(float(st["topo"]))
    sizes = manifest.get("stage_sizes") or []
    if pta_on and stage_topo:
        topo_line = "; ".join(f"stage {s + 1}" + (f" ({sizes[s]} px)" if s < len(sizes) else "")
                              + f": {np.mean(v):.4g}" for s, v in sorted(stage_topo.items()))
    else:
        topo_line = "none (no PTA term in this run)"
    real_ess = sum(s["real_h1_ess"] for s in stats)
    real_fin = sum(s["real_h1_fin"] for s in stats)
    syn_ess = sum(s["syn"]["h1_essential"] for s in stats)
    syn_fin = sum(s["syn"]["h1_finite"] for s in stats)
    shown = (f"all {len(classes)} classes" if len(classes) == info.num_classes
             else f"classes 0–{len(classes) - 1} of {info.num_classes}")
    md = [
        f"# Topology report: {method}, {info.name}, IPC {ipc}", "",
        f"Distilled set `{distilled_dir}`; teacher {teacher.arch} (`{teacher.path}`); {shown}.", "",
        *([*(f"> {n}" for n in notes), ""] if notes else []),
        "## Summary", "",
        f"- Shared-anchor fraction: {'n/a (no DRC selections)' if saf is None else f'{float(saf):.3f}'}",
        f"- Share of recover time: DRC {pct(manifest.get('drc_share'))}, PTA {pct(manifest.get('pta_share'))}",
        f"- Mean topology loss per stage (mean over groups of the step-averaged, class-summed PTA loss): {topo_line}",
        f"- Infinite (never-filled) H1 bars: real {_share(real_ess, real_fin)} of {real_ess + real_fin} H1 bars "
        f"(over {real_subsets} subsets per class), synthetic {_share(syn_ess, syn_fin)} of {syn_ess + syn_fin}; "
        f"policy `infinite_bars={infinite}`"
        + (" gives them death 1" if infinite == "one" else " gives them death = the largest edge" if infinite == "max_edge"
           else " drops them from the diagrams and the loss"),
        f"- Filtration: the PTA settings of the run: mutual k-NN with k = {k} (clipped to n−1), f = D/κ_c with "
        f"κ_c the largest squared distance among the class's real features; PTA was "
        f"{'on' if pta_on else 'off'} in this run.", "",
        "## Per class", "",
        "Features: teacher penultimate features, L2-normalised. Real: the class's training images outside the "
        f"teacher's held-out split (at most {max_real}); {real_subsets} random subsets of the synthetic cloud's size.", "",
        "| class | real images | κ_c | H1 bars real (mean per subset) | H1 bars synthetic | infinite H1 real | infinite H1 synthetic |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in stats:
        runs = max(1, s["real_runs"])
        md.append(f"| {s['class']} ({s['name']}) | {s['n_real']} | {s['kappa']:.3f} | "
                  f"{(s['real_h1_fin'] + s['real_h1_ess']) / runs:.1f} | {s['syn']['h1_finite'] + s['syn']['h1_essential']} | "
                  f"{_share(s['real_h1_ess'], s['real_h1_fin'])} | {_share(s['syn']['h1_essential'], s['syn']['h1_finite'])} |")
    md += [
        "", "## Betti curves", "",
        "β0 (components) and β1 (loops) against the filtration value s ∈ [0, 1): bars with birth ≤ s < death. "
        "Blue: mean over the real subsets (band: min–max); orange: the synthetic images.", "",
        "![betti curves](betti_curves.png)", "",
        "## Persistence diagrams", "",
        "Birth vs death of H0 (dots) and H1 (triangles) bars; real: the first random subset. "
        "Essential bars sit at the death their policy gives them.", "",
        "![persistence diagrams](diagrams.png)", "",
        "## Anchors", "",
        *anchor_md,
    ]
    path = out_dir / "report.md"
    io.write_bytes(path, ("\n".join(md) + "\n").encode())
    return path

