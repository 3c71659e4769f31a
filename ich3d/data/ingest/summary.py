"""What one ingest run did: :class:`IngestSummary`, filled from the recorded counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["IngestSummary"]


@dataclass(frozen=True)
class IngestSummary:
    """Counts of one ingest run (``cached=True``: read back from a complete cache).

    Attributes:
        out: the cache folder.
        files_seen: files found under the images folder.
        slices_kept: rows of slices.csv.
        volumes: rows of volumes.csv.
        volumes_written: volumes built by this run.
        volumes_reused: volumes found finished on disk (resume / complete cache).
        volumes_with_gap: volumes whose gap flag is set.
        blank_slices: kept slices whose cached image is constant.
        label_rows: data rows of the labels CSV (0 when unlabeled).
        label_rows_duplicate: exact duplicate rows dropped.
        label_conflicts: (image, subtype) pairs with conflicting values (max taken).
        label_images: distinct image ids in the labels CSV.
        skipped: skipped.csv row counts by reason.
        cached: True when the cache was complete and nothing was recomputed.
        volumes_lossy: volumes with lossy-compressed slices.
        volumes_nonuniform: volumes whose slice spacing is not uniform.
        patients_from_study: volumes whose files have no PatientID (study stands in).
    """

    out: Path
    files_seen: int
    slices_kept: int
    volumes: int
    volumes_written: int
    volumes_reused: int
    volumes_with_gap: int
    blank_slices: int
    label_rows: int
    label_rows_duplicate: int
    label_conflicts: int
    label_images: int
    skipped: dict[str, int] = field(default_factory=dict)
    cached: bool = False
    volumes_lossy: int = 0
    volumes_nonuniform: int = 0
    patients_from_study: int = 0

    @classmethod
    def from_counts(
        cls,
        out: Path,
        counts: dict[str, Any],
        *,
        written: int,
        reused: int,
        cached: bool = False,
    ) -> IngestSummary:
        """The summary of the ``counts`` an ingest records in ``ingest.json``.

        Args:
            out: the cache folder.
            counts: ``ingest.json``'s ``"counts"``.
            written: volumes built by this run.
            reused: volumes found finished on disk.
            cached: True when the cache was complete and nothing was recomputed.
        """
        return cls(
            out=out,
            files_seen=counts["files_seen"],
            slices_kept=counts["slices_kept"],
            volumes=counts["volumes"],
            volumes_written=written,
            volumes_reused=reused,
            volumes_with_gap=counts["volumes_with_gap"],
            blank_slices=counts["blank_slices"],
            label_rows=counts["label_rows"],
            label_rows_duplicate=counts["label_rows_duplicate"],
            label_conflicts=counts["label_conflicts"],
            label_images=counts["label_images"],
            skipped=dict(counts["skipped"]),
            cached=cached,
            volumes_lossy=counts["volumes_lossy"],
            volumes_nonuniform=counts["volumes_nonuniform"],
            patients_from_study=counts["patients_from_study"],
        )

    @property
    def skipped_total(self) -> int:
        """Rows of skipped.csv."""
        return sum(self.skipped.values())

    def format(self) -> str:
        """Human-readable multi-line summary (printed by ``ich3d ingest``)."""
        lines = [
            f"ingest {'(cache complete, nothing to do) ' if self.cached else ''}-> {self.out}",
            f"  files seen            {self.files_seen}",
            f"  slices kept           {self.slices_kept}",
            f"  volumes               {self.volumes} "
            f"(written {self.volumes_written}, reused {self.volumes_reused}, "
            f"with gap {self.volumes_with_gap}, non-uniform spacing {self.volumes_nonuniform}, "
            f"lossy {self.volumes_lossy}, patient from study {self.patients_from_study})",
            f"  blank slices kept     {self.blank_slices}",
        ]
        if self.label_rows:
            lines.append(
                f"  label rows            {self.label_rows} "
                f"({self.label_rows_duplicate} exact duplicates dropped, "
                f"{self.label_conflicts} conflicts -> max, {self.label_images} images)"
            )
        lines.append(f"  skipped               {self.skipped_total}")
        for reason, n in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {n:8d}  {reason}")
        return "\n".join(lines)
