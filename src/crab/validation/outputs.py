"""Writes a validation report folder: ``metrics.json``, ``report.md`` and the plots, atomically."""

from __future__ import annotations

from pathlib import Path

from crab.core.paths import write_folder_atomically
from crab.core.provenance import run_record, write_json
from crab.validation import plots as plotting
from crab.validation import report
from crab.validation.results import ValidationResult

#: The file whose presence says that a folder holds a validation report (and may be replaced).
REPORT_MARKER = "metrics.json"
#: What a report folder holds (a folder with anything else is not replaced).
REPORT_FILES = (REPORT_MARKER, "report.md", "*.png")


def write_outputs(result: ValidationResult, out: Path, plots: bool = True) -> Path:
    """Write metrics.json, report.md and plots into ``out`` atomically (temporary folder, then rename)."""

    def write(tmp: Path) -> None:
        figs = plotting.write_plots(result, tmp) if plots else []
        rec = run_record(result.config, result.config.seed)
        payload = dict(result.to_dict(), run=rec, figures=[f.name for f in figs])
        write_json(tmp / REPORT_MARKER, payload)
        report.write_markdown(result, tmp / "report.md", figures=figs)

    write_folder_atomically(out, write)
    result.out_dir = out
    return out
