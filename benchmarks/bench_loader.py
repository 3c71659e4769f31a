"""The training loader: augmentation in the loader vs on the device, and the table's cost per worker.

Run from the repository root::

    python -m benchmarks.bench_loader [--patients 4] [--size 512] [--batches 12] [--device cpu]
                                      [--rows 752803] [--volumes 21744] [--workers 2]

Part 1, ``data.augment_on`` (synthetic DICOM, ``ich3d synth`` + ingest at
``size``, cached at ``size / 2``: 256 x 256 by default): the stage-1 training
loader's delivery rate, one process and one thread (what one DataLoader worker
does), over the same balanced draws:

- ``loader``: the worker reads, augments (MONAI) and windows each slice;
- ``device``: the worker reads the HU only; the augmentation and windowing run
  in ``on_after_batch_transfer`` on the trainer's device, batched; its cost
  (with the transfer) is timed on ``--device`` (default this CPU, ``cuda`` on a
  GPU machine);
- without augmentation, for reference.

Part 2, the slice table shared with spawn workers: a synthetic cache table of
``rows`` slices over ``volumes`` series (RSNA stage 2 train: 752,803 images; no
DICOM, the volume files are hard links to one small array), the stage-1 slice
dataset as it was (``benchmarks._dataframe_datasets``: DataFrame, object keys,
the cache object with its tables) against the fixed-dtype, memory-mapped
:class:`~ich3d.data.datasets.TableArrays`: the pickled size (what each spawn
or forkserver worker receives) and the memory of ``workers`` spawn workers
after their first batches (RSS, and USS = private pages, from
``/proc/PID/smaps_rollup``, Linux), against workers of a one-row dataset
(imports only). Ratios are printed against the old dataset measured in the
same run.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

# ----------------------------------------------------------------------------- part 1


def _rate(dm, batches: int, hook: bool, device: torch.device) -> tuple[float, float, int]:
    """(slices/s delivered by the loader, slices/s of the transfer + device hook, slices)."""
    from lightning_fabric.utilities.apply_func import move_data_to_device

    loader_s = hook_s = 0.0
    n = 0
    it = iter(dm.train_dataloader())
    for _ in range(batches):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        if hook:
            batch = dm.on_before_batch_transfer(batch, 0)
            if device.type == "cuda":  # what Lightning does with a pinned loader
                batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                t1 = time.perf_counter()
            batch = dm.on_after_batch_transfer(move_data_to_device(batch, device), 0)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        loader_s += t1 - t0
        hook_s += t2 - t1
        n += len(batch["key"])
    return n / loader_s, (n / hook_s if hook else float("nan")), n


def part_augment(args: argparse.Namespace, root: Path) -> None:
    from ich3d.data.datamodule import SliceDataModule
    from ich3d.data.ingest import run_ingest
    from ich3d.synth import NO_DEFECTS, generate

    t0 = time.perf_counter()
    generate(root / "synth", patients=args.patients, size=args.size, slices=(16, 24), defects=NO_DEFECTS, progress=False)
    run_ingest(root / "synth" / "stage_2_train", root / "synth" / "stage_2_train.csv", root / "cache", progress=False)
    print(f"data: {args.patients} patients at {args.size} px (cached {args.size // 2} px), "
          f"synth + ingest {time.perf_counter() - t0:.1f} s; {args.batches} batches of {args.batch_size}, "
          f"best of {args.repeat}, 1 thread")

    def module(augment: bool, where: str) -> SliceDataModule:
        dm = SliceDataModule(root / "cache", batch_size=args.batch_size, samples_per_epoch=args.batch_size * args.batches,
                             augment=augment, augment_on=where, split_fractions=(0.5, 0.25, 0.25), seed=0)
        dm.prepare_data()
        dm.setup("fit")
        return dm

    runs = {"loader": (True, "loader", False), "device": (True, "device", True), "no augmentation": (False, "loader", False)}
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.repeat):  # interleaved, best of
        for name, (augment, where, hook) in runs.items():
            deliver, on_device, _ = _rate(module(augment, where), args.batches, hook, torch.device(args.device))
            old = best.get(name, (0.0, 0.0))
            best[name] = (max(old[0], deliver), max(old[1], on_device) if hook else float("nan"))
    px = (args.size // 2) ** 2
    bytes_per = {"loader": 3 * 4 * px, "device": 2 * px, "no augmentation": 3 * 4 * px}
    print(f"{'augment_on':<18}{'loader slices/s':>16}{'ms/slice':>10}{'KiB/slice':>11}{'hook slices/s':>15}"
          f"  (hook on {args.device})")
    for name, (deliver, hook) in best.items():
        hook_txt = f"{hook:>15.0f}" if name == "device" else f"{'-':>15}"
        print(f"{name:<18}{deliver:>16.0f}{1000 / deliver:>10.2f}{bytes_per[name] / 1024:>11.0f}{hook_txt}")
    ratio = best["device"][0] / best["loader"][0]
    both = 1 / (1 / best["device"][0] + 1 / best["device"][1])
    print(f"loader delivery, device / loader mode: {ratio:.1f}x; bytes per slice to transfer: "
          f"{bytes_per['loader'] / bytes_per['device']:.0f}x fewer")
    where = "this CPU" if args.device == "cpu" else args.device
    print(f"device mode with its transfer + hook on {where}: {both:.0f} slices/s in one process "
          f"({both / best['loader'][0]:.2f}x the loader mode)")


# ----------------------------------------------------------------------------- part 2


def _hexes(rng: np.random.Generator, n: int, digits: int) -> np.ndarray:
    return np.array([f"ID_{v:0{digits}x}"[: 3 + digits] for v in rng.integers(0, 16**digits, size=n, dtype=np.uint64)])


def _synthetic_cache(root: Path, rows: int, volumes: int):
    """An ingest cache's tables at RSNA scale (strings like the ingest's) and the stage-1 slice table."""
    from ich3d.data.cache import open_cache
    from ich3d.data.schema import LABEL_COLUMNS, SLICE_COLUMNS, VOLUME_COLUMNS, series_key

    rng = np.random.default_rng(0)
    per = np.full(volumes, rows // volumes)
    per[: rows - per.sum()] += 1
    code = np.repeat(np.arange(volumes), per)
    slice_index = np.concatenate([np.arange(n) for n in per])
    series = _hexes(rng, volumes, 10)
    keys = np.array([series_key(s) for s in series])
    patients, studies = _hexes(rng, volumes, 8), _hexes(rng, volumes, 10)
    (root / "volumes").mkdir(parents=True)
    np.save(root / "one.npy", np.full((int(per.max()), 16, 16), 30, dtype=np.int16))
    for k in keys:
        os.link(root / "one.npy", root / "volumes" / f"{k}.npy")
    labels = {c: (rng.random(rows) < 0.05).astype(np.int64) for c in LABEL_COLUMNS}
    image_ids = _hexes(rng, rows, 9)
    slices = pd.DataFrame({
        "image_id": image_ids, "patient_id": patients[code], "study_uid": studies[code], "series_uid": series[code],
        "key": keys[code], "slice_index": slice_index, "position": slice_index * 5.0, **labels,
        "file": np.char.add(image_ids, ".dcm"), "frame": 0,
    })[list(SLICE_COLUMNS)]
    vol = pd.DataFrame({
        "key": keys, "patient_id": patients, "study_uid": studies, "series_uid": series, "n_slices": per,
        "height": 16, "width": 16, "pixel_spacing": 0.9, "slice_spacing": 5.0, "gap": 0,
        **{c: 0 for c in LABEL_COLUMNS}, "path": [f"volumes/{k}.npy" for k in keys], "slice_spacing_min": 5.0,
        "slice_spacing_max": 5.0, "uniform_spacing": 1, "slice_thickness": 5.0, "kernel": "", "transfer_syntax": "",
        "lossy": 0, "multiframe": 0, "patient_from_study": 0,
    })[list(VOLUME_COLUMNS)]
    slices.to_csv(root / "slices.csv", index=False)
    vol.to_csv(root / "volumes.csv", index=False)
    (root / "ingest.json").write_text('{"complete": true}\n')
    cache = open_cache(root)
    sl = cache.slices[["key", "slice_index", "any"]].copy()  # what SliceDataModule.setup builds
    sl["label"] = sl["any"]
    sl["volume_label"] = sl.groupby("key")["any"].transform("max")
    sl["cavity_fraction"] = rng.random(rows)
    _ = cache.volumes
    table = sl[["key", "slice_index", "label", "volume_label", "cavity_fraction"]].reset_index(drop=True)
    return cache, table


def _smaps(pid: int) -> tuple[float, float]:
    """(RSS, USS) in MiB of a process."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value)
    return fields["Rss"] / 1024, (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024


def _workers_memory(dataset, workers: int) -> tuple[float, float, float]:
    """(seconds to the first batches, mean RSS, mean USS in MiB) of spawn workers that served a batch each."""
    from torch.utils.data import DataLoader

    n = len(dataset)
    loader = DataLoader(dataset, batch_size=4, sampler=[i % n for i in range(0, 997 * 8 * workers, 997)],
                        num_workers=workers, multiprocessing_context="spawn", prefetch_factor=1)
    t0 = time.perf_counter()
    it = iter(loader)
    for _ in range(workers):
        next(it)
    seconds = time.perf_counter() - t0
    mem = [_smaps(w.pid) for w in it._workers]  # noqa: SLF001 (the benchmark reads the worker pids)
    del it
    gc.collect()
    return seconds, float(np.mean([m[0] for m in mem])), float(np.mean([m[1] for m in mem]))


def part_memory(args: argparse.Namespace, root: Path) -> None:
    from benchmarks._dataframe_datasets import DataFrameSliceDataset
    from ich3d.data.augment import build_augment_2d
    from ich3d.data.datasets import SliceDataset

    t0 = time.perf_counter()
    cache, table = _synthetic_cache(root / "table_cache", args.rows, args.volumes)
    windows = ["brain", "subdural", "bone"]
    print(f"\ntable: {len(table):,} slices over {args.volumes:,} volumes, built in {time.perf_counter() - t0:.1f} s; "
          f"{args.workers} spawn workers")
    variants = {
        "one-row dataset (imports only)": lambda: SliceDataset(cache, table.iloc[:1], windows, transform=build_augment_2d()),
        "DataFrame dataset (before)": lambda: DataFrameSliceDataset(cache, table, windows, transform=build_augment_2d()),
        "TableArrays dataset (now)": lambda: SliceDataset(cache, table, windows, transform=build_augment_2d()),
    }
    rows: dict[str, tuple[float, float, float, float]] = {}
    for name, make in variants.items():
        ds = make()
        t0 = time.perf_counter()
        size = len(pickle.dumps(ds, protocol=pickle.HIGHEST_PROTOCOL)) / 2**20
        pickle_s = time.perf_counter() - t0
        start, rss, uss = _workers_memory(ds, args.workers)
        rows[name] = (size, rss, uss, start)
        print(f"  {name}: pickled {size:.3f} MiB in {pickle_s:.2f} s")
        del ds
        gc.collect()
    print(f"{'dataset':<32}{'pickled MiB':>12}{'RSS/worker':>12}{'USS/worker':>12}{'start s':>9}")
    for name, (size, rss, uss, start) in rows.items():
        print(f"{name:<32}{size:>12.3f}{rss:>12.0f}{uss:>12.0f}{start:>9.1f}")
    base, old, new = rows["one-row dataset (imports only)"], rows["DataFrame dataset (before)"], rows["TableArrays dataset (now)"]
    print(f"pickled size, before / now: {old[0] / new[0]:.0f}x")
    print(f"worker memory above imports (USS), before / now: {old[2] - base[2]:.1f} / {new[2] - base[2]:.1f} MiB; "
          f"whole worker USS before / now: {old[2] / new[2]:.2f}x, RSS {old[1] / new[1]:.2f}x; "
          f"for {args.workers} workers: {args.workers * (old[2] - new[2]) / 1024:.2f} GiB less")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--size", type=int, default=512, help="synthetic DICOM size (cached at half)")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows", type=int, default=752_803)
    parser.add_argument("--volumes", type=int, default=21_744)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--part", choices=["all", "augment", "memory"], default="all")
    parser.add_argument("--device", default="cpu", help="where the device-mode hook runs (cpu, cuda)")
    args = parser.parse_args(argv)

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("ich3d").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("all", "augment"):
            part_augment(args, Path(tmp))
        if args.part in ("all", "memory"):
            part_memory(args, Path(tmp))


if __name__ == "__main__":
    main()
