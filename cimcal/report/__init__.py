"""The chip-profile report: plots (:mod:`.plots`), the self-contained HTML page (:mod:`.html`)
and the assembly from a profile and held-out tables (:mod:`.build`)."""

from cimcal.report.build import build_report, write_report

__all__ = ["build_report", "write_report"]
