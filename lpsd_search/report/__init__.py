"""Results of a search: its record in the study, files, Pareto logic, tables, PNG and HTML.

``record`` (the study's user-attribute schema: the only module that spells a key), ``pareto``
(plain numpy front and hypervolume), ``results`` (the one study-level front, ``pareto.json`` and
``trials.csv`` from a study), ``data`` (the files read back for rendering), ``summary``
(terminal tables), ``png``, ``svg``, ``layers`` and ``html`` (the visual report). Nothing here
runs a trial.
"""

from __future__ import annotations

from lpsd_search.report.data import ReportData, load_report
from lpsd_search.report.html import render_report
from lpsd_search.report.pareto import as_losses, hypervolume_2d, non_dominated, pareto_mask
from lpsd_search.report.png import render_png
from lpsd_search.report.results import (
    Fidelity,
    TrialRow,
    front,
    front_numbers,
    pareto_document,
    trial_rows,
    write_results,
)
from lpsd_search.report.summary import print_summary

__all__ = [
    "Fidelity",
    "ReportData",
    "TrialRow",
    "as_losses",
    "front",
    "front_numbers",
    "hypervolume_2d",
    "load_report",
    "non_dominated",
    "pareto_document",
    "pareto_mask",
    "print_summary",
    "render_png",
    "render_report",
    "trial_rows",
    "write_results",
]
