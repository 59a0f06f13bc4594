"""The benchmark's report: JSON, a Markdown table and plots."""


from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import denoise as _denoise
from . import startup as _startup


def _ratio(res: dict, name: str):
    r = res[name].get("roofline")
    if not r or r not in res:
        return None
    return res[name]["per_s"] / res[r]["per_s"]


def _table(lines: list, res: dict, unit: str = "frames/s"):
    lines += [f"| what | {unit} | GB/s | vs roofline | roofline | median s | spread % |",
              "|---|---:|---:|---:|---|---:|---:|"]
    for name, e in res.items():
        ratio = _ratio(res, name)
        lines.append(f"| {name} | {e['per_s']:.1f} | {e['GB_per_s']:.2f} | "
                     f"{'' if ratio is None else f'{ratio:.2f}'} | {e.get('roofline') or ''} | "
                     f"{e['median_s']:.3f} | {e['spread_pct']:.0f} |")


def _time_table(lines: list, pipelines: dict):
    """Where each job's time went (its last timed run): thread-seconds, the GPU conveyor's waits, and
    what the host did (cores busy, Zarr's event-loop thread, the disk)."""
    rows = {k: e for k, e in pipelines.items() if e.get("time_account") or e.get("host")}
    if not rows:
        return
    lines += ["Where the time went (last timed run of each; thread-seconds summed over the blocks; the GPU "
              "engine's conveyor waits and what it waited on most; cores busy = process CPU-s per wall s; "
              "Zarr loop = the share of the wall time Zarr's one event-loop thread worked; iowait = the "
              "machine's CPU time waiting on the disk):", "",
              "| job | wall s | blocks s | frames/s on the blocks | read | stages | write | record | threads | "
              "waits: reads / device / writers, own work s | paced by | cores busy | Zarr loop | iowait % |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---:|---:|---:|"]

    def num(v, fmt):
        return "" if v is None else format(v, fmt)

    for k, e in rows.items():
        a, h = e.get("time_account") or {}, e.get("host") or {}
        blocks = a.get("blocks_s")
        rate = f"{e['items'] / blocks:.1f}" if blocks else ""
        th = a.get("threads")
        th = f"{th['readers']} + {th['writers']}" if isinstance(th, dict) else ("" if th is None else str(th))
        w = a.get("gpu_waits_s")
        ws = (" / ".join(f"{w[x]:.2f}" for x in ("reads", "device", "writers")) + f", {a.get('gpu_busy_s', 0):.2f}"
              if w else "")
        lines.append(f"| {k} | {num(a.get('wall_s'), '.2f')} | {num(blocks, '.2f')} | {rate} | "
                     f"{num(a.get('read_s'), '.2f')} | {num(a.get('stages_s'), '.2f')} | "
                     f"{num(a.get('write_s'), '.2f')} | "
                     f"{num(a.get('record_s'), '.2f')} | {th} | {ws} | {a.get('bound_by') or ''} | "
                     f"{num(h.get('cores_busy'), '.1f')} | {num(h.get('zarr_loop_busy'), '.2f')} | "
                     f"{num(h.get('iowait_pct'), '.1f')} |")
    lines.append("")


def _mtf_by_size(mtf: dict) -> dict:
    """``{"128x128": {job: entry}, ...}``; a report of one size only (``{job: entry}``) is read as 128x128."""
    if any("per_s" in e for e in mtf.values()):
        return {"128x128": mtf}
    return mtf


def _mtf_section(lines: list, mtf: dict):
    """The slanted-edge MTF at each ROI size: ROIs/s and the ratio to the textbook per-ROI peer."""
    by_size = _mtf_by_size(mtf)
    n = next(iter(next(iter(by_size.values())).values()))["items"]
    lines += ["## Slanted-edge MTF", "",
              f"{n} noisy slanted-edge ROIs (float32) per call, the same arrays for every job; the batched engine on "
              "all of them at once, the same engine one ROI at a time, and the textbook per-ROI peer (row centroids, a "
              "fitted line, 4x binned ESF, FFT). On NumPy arrays (the CPU, one thread)"
              + (", and on ROIs already on the GPU where marked [gpu]" if any(k.endswith("[gpu]") for res in
                                                                              by_size.values() for k in res) else "")
              + ". vs textbook = ROIs/s / the textbook peer's ROIs/s in the same run.", "",
              "| ROI | what | ROIs/s | vs textbook | median s | spread % |", "|---|---|---:|---:|---:|---:|"]
    for size, res in by_size.items():
        peer = res.get("peer: textbook per-ROI mtf", {}).get("per_s")
        for name, e in res.items():
            ratio = e.get("ratio_to_textbook", e["per_s"] / peer if peer else None)
            lines.append(f"| {size} | {name} | {e['per_s']:.1f} | {'' if ratio is None else f'{ratio:.2f}'} | "
                         f"{e['median_s']:.3f} | {e['spread_pct']:.0f} |")
    lines += ["", "Batched / textbook: " + ", ".join(
        f"{size} {res['mtf batched']['per_s'] / res['peer: textbook per-ROI mtf']['per_s']:.2f}"
        + (f" ([gpu] {res['mtf batched [gpu]']['per_s'] / res['peer: textbook per-ROI mtf']['per_s']:.2f})"
           if "mtf batched [gpu]" in res else "")
        for size, res in by_size.items() if {"mtf batched", "peer: textbook per-ROI mtf"} <= set(res)) + ".", ""]


def write_report(data: dict, out: Path) -> list[Path]:
    """``bench_<device>.json``, ``.md`` and the two plots into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    dev = data["meta"]["device"]
    stem = f"bench_{dev}"
    for size, block in data["sizes"].items():
        for name, e in block["stages"].items():
            e["ratio_to_roofline"] = _ratio(block["stages"], name)
        for name, e in block["pipelines"].items():
            e["ratio_to_roofline"] = _ratio(block["pipelines"], name)
    m = data["meta"]
    lines = [f"# Throughput benchmark ({dev}; {m['machine']}; {m['date']})", "",
             f"Made by `{m['command']}` in {m['seconds']:.0f} s; Python {m['python']}, NumPy {m['numpy']}, "
             f"Numba kernels {'on' if m['jit'] else 'off'}. Medians of {m['repeats']} runs after a warm-up; "
             "spread = (max - min) / median. Ratios are against the roofline measured in the same run.", ""]
    for size, block in data["sizes"].items():
        lines += [f"## {size} x {size}, uint16 input (simulated, eu-gc)", "",
                  f"Stages alone, in memory ({block['block_frames']} frames per block):", ""]
        _table(lines, block["stages"])
        lines += ["", f"Zarr to Zarr ({block['frames']} frames, chunk {block['chunk_frames']} frames, output "
                      f"{m['codec']}" + (f"; the full default pipeline on {block['full_frames']} frames"
                                         if block["full_frames"] < block["frames"] else "") + "):", ""]
        _table(lines, block["pipelines"])
        lines += ["", "Against the Zarr copy that writes float32 (the pipelines' output dtype): " + ", ".join(
            f"{k} {e['ratio_to_float32_copy']:.2f}" for k, e in block["pipelines"].items()
            if "ratio_to_float32_copy" in e and "[cpu engine]" not in k) + ".",
            "Against the same copy through the pipelines' reader and writer (their own chunk decoder and "
            "encoder, not Zarr's): " + ", ".join(f"{k} {e['ratio_to_io_copy']:.2f}"
                                                 for k, e in block["pipelines"].items()
                                                 if "ratio_to_io_copy" in e and "[cpu engine]" not in k) + ".", ""]
        speed = [f"{k}: {e['speedup_vs_cpu_engine']:.1f}x" for k, e in block["pipelines"].items()
                 if "speedup_vs_cpu_engine" in e]
        if speed:
            lines += ["Speed-up over the CPU engine on this machine (same run): " + "; ".join(speed) + ".", ""]
        _time_table(lines, block["pipelines"])
    if data.get("mtf"):
        _mtf_section(lines, data["mtf"])
    dm = data.get("denoise_methods")
    if dm:
        lines += ["## Denoising methods, quality and speed", "",
                  "Each row is what `denoise.enabled: true` runs with `denoise.method` = the row: the motion-adaptive "
                  "temporal filter, then the spatial method per frame inside the GAT, with the schema's parameters "
                  "(`pipeline/bench/denoise.py`). " + _denoise.describe(dm["meta"]), "", *_denoise.rows_table(dm), ""]
    su = data.get("startup")
    if su:
        lines += ["## Start-up of a command (fresh processes)", "",
                  "Wall clock from start to exit of `python -m pipeline.cli ...`; cold: the first call with an empty "
                  f"Numba kernel cache (the tiny run compiles what it uses), warm: the median of the next "
                  f"{su['repeats']} calls{_startup._batch_note(su)} (`pipeline/bench/startup.py`).", "",
                  *_startup.rows_table(su), ""]
    sc = data.get("scaling")
    if sc:
        lines += [f"## Scaling ({sc['pipeline']}, {sc['size']} x {sc['size']}, each point a fresh process)", "",
                  "| frames | frames/s | peak RSS MiB |", "|---:|---:|---:|"]
        lines += [f"| {p['frames']} | {p['frames_per_s']:.1f} | {p['peak_rss_MiB']:.0f} |" for p in sc["frames"]]
        lines += ["", "| worker threads (Dask and Numba) | frames/s |", "|---:|---:|"]
        lines += [f"| {p['workers']} | {p['frames_per_s']:.1f} |" for p in sc["workers"]]
        lines.append("")
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(data, indent=2, default=float) + "\n")
    paths[1].write_text("\n".join(lines))
    paths += _plots(data, out, stem)
    return paths


def _plots(data: dict, out: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    sizes = sorted(int(s) for s in data["sizes"])
    if not sizes:  # only the other sections were run
        return paths + _scaling_plot(data, out, stem)
    names = list(data["sizes"][str(sizes[0])]["stages"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8))
    for name in names:
        ys = [data["sizes"][str(s)]["stages"].get(name, {}).get("per_s", np.nan) for s in sizes]
        kind = data["sizes"][str(sizes[0])]["stages"][name]["kind"]
        style = {"roofline": "k--", "peer": ":", "stage": "-"}[kind]
        a.plot(sizes, ys, style, marker="o", label=name)
    a.set_xscale("log", base=2)
    a.set_yscale("log")
    a.set_xlabel("frame size (pixels per side)")
    a.set_ylabel("frames/s")
    a.set_title("Stages alone (in memory)")
    a.legend(fontsize=7)
    a.grid(True, which="both", alpha=0.3)
    big = data["sizes"][str(sizes[-1])]
    labels, vals = [], []
    for grp in ("stages", "pipelines"):
        for name, e in big[grp].items():
            if e.get("ratio_to_roofline") is not None:
                labels.append(name)
                vals.append(e["ratio_to_roofline"])
    b.barh(range(len(vals)), vals, color=["C0" if not lab.startswith("peer") else "C7" for lab in labels])
    b.set_yticks(range(len(vals)), labels, fontsize=7)
    b.axvline(1.0, color="k", lw=0.8)
    b.set_xscale("log")
    b.set_xlabel("throughput / roofline (memory copy; Zarr copy for pipelines)")
    b.set_title(f"Against the rooflines at {sizes[-1]} x {sizes[-1]}")
    fig.tight_layout()
    p = out / f"{stem}_stages.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths + _scaling_plot(data, out, stem)


def _scaling_plot(data: dict, out: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    sc = data.get("scaling")
    if sc:
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        n = [q["frames"] for q in sc["frames"]]
        a.plot(n, [q["frames_per_s"] for q in sc["frames"]], "o-", color="C0")
        a.set_xscale("log", base=2)
        a.set_xlabel("frames in the video")
        a.set_ylabel("frames/s", color="C0")
        a.set_ylim(bottom=0)
        a2 = a.twinx()
        a2.plot(n, [q["peak_rss_MiB"] for q in sc["frames"]], "s--", color="C3")
        a2.set_ylabel("peak RSS (MiB)", color="C3")
        a2.set_ylim(bottom=0)
        a.set_title(f"{sc['pipeline']}, {sc['size']}^2")
        w = [q["workers"] for q in sc["workers"]]
        b.plot(w, [q["frames_per_s"] for q in sc["workers"]], "o-")
        b.set_xlabel("worker threads")
        b.set_ylabel("frames/s")
        b.set_ylim(bottom=0)
        b.set_xticks(w)
        b.set_title("Worker scaling")
        fig.tight_layout()
        p = out / f"{stem}_scaling.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
