"""``cimcal fit``, ``cimcal validate`` and ``cimcal report``: parse, call the library, print."""

from __future__ import annotations

import json

import click

from cimcal.cli.options import column_map_option
from cimcal.errors import CimcalError, ConfigError
from cimcal.noise.defaults import DEFAULT_KNOTS, DEFAULT_MAX_KS, DEFAULT_MAX_TV

__all__ = ["fit", "validate", "report", "ValidationFailed"]


class ValidationFailed(CimcalError):
    """The profile does not match the held-out data within the thresholds (exit code 1, not bad input)."""

    exit_code = 1


def _sources(paths: tuple[str, ...]) -> list[str] | None:
    return list(paths) or None


_conductance_option = click.option(
    "--conductance", "conductance", multiple=True, metavar="PATH",
    help="Conductance table: CSV, Parquet, a directory or a partitioned dataset (repeatable).",
)
_adc_option = click.option(
    "--adc", "adc", multiple=True, metavar="PATH", help="ADC table (same formats; repeatable)."
)
@click.command()
@_conductance_option
@_adc_option
@column_map_option
@click.option("--n-knots", type=click.IntRange(min=256), default=DEFAULT_KNOTS, show_default=True,
              help="Quantiles per conductance inverse-CDF table (more resolve rarer stuck-cell tails).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Profile to write (.cimprof).")
def fit(conductance, adc, column_map, n_knots, output) -> None:
    """Fit a chip profile from conductance and/or ADC measurement tables."""
    from cimcal.noise.fit import fit_profile

    if not conductance and not adc:
        raise ConfigError("nothing to fit: give --conductance PATH and/or --adc PATH")
    profile = fit_profile(
        conductance=_sources(conductance),
        adc=_sources(adc),
        column_map=column_map or None,
        n_knots=n_knots,
        progress=True,
    )
    path = profile.save(output)
    parts = []
    if profile.conductance is not None:
        c = profile.conductance
        parts.append(f"{len(c.levels_)} levels x {len(c.t_s_)} time points")
    if profile.adc is not None:
        parts.append(f"ADC {len(profile.adc.cols_)} column(s), {int(profile.adc.n_codes_)} codes")
    click.echo(f"wrote {path}: {', '.join(parts)}; sha256 {profile.sha256[:16]}")


def _load(profile_path: str):
    from cimcal.noise.profile import ChipProfile

    return ChipProfile.load(profile_path)


@click.command()
@click.argument("profile_path", metavar="PROFILE")
@_conductance_option
@_adc_option
@column_map_option
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON instead of a table.")
@click.option("--max-ks", type=click.FloatRange(0, 1), default=DEFAULT_MAX_KS, show_default=True,
              help="Largest acceptable KS statistic: two-sample per (level, t_s), PIT per ADC column, pooled PIT.")
@click.option("--max-tv", type=click.FloatRange(0, 1), default=DEFAULT_MAX_TV, show_default=True,
              help="Largest acceptable code-histogram total-variation distance per ADC column.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the profile samples.")
def validate(profile_path, conductance, adc, column_map, as_json, max_ks, max_tv, seed) -> None:
    """Check a profile against held-out measurements (KS, PIT, TV, tail fractions).

    Exit status 0 when every statistic is within its threshold, 1 when one exceeds it, 2 for bad input.
    """
    from cimcal.noise.validation import validate_profile

    if not conductance and not adc:
        raise ConfigError("nothing to validate: give held-out --conductance PATH and/or --adc PATH")
    profile = _load(profile_path)
    result = validate_profile(
        profile, _sources(conductance), _sources(adc), column_map=column_map or None, seed=seed
    )
    failures = result.failures(max_ks, max_tv)
    if as_json:
        payload = result.to_dict()
        payload.update(profile=str(profile_path), max_ks=max_ks, max_tv=max_tv, passed=not failures,
                       failures=failures)
        click.echo(json.dumps(payload, indent=2))
    else:
        click.echo(result.format_table())
        click.echo(f"{'PASS' if not failures else 'FAIL'} (max KS {max_ks:g}, max TV {max_tv:g})")
    if failures:
        more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
        raise ValidationFailed(f"validation failed: {failures[0]}{more}")


@click.command()
@click.argument("profile_path", metavar="PROFILE")
@_conductance_option
@_adc_option
@column_map_option
@click.option("--max-ks", type=click.FloatRange(0, 1), default=DEFAULT_MAX_KS, show_default=True,
              help="Threshold to highlight in the validation table.")
@click.option("--max-tv", type=click.FloatRange(0, 1), default=DEFAULT_MAX_TV, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="HTML file to write.")
def report(profile_path, conductance, adc, column_map, max_ks, max_tv, seed, output) -> None:
    """Write one self-contained HTML report: plots, validation table and provenance."""
    from cimcal.report import write_report

    profile = _load(profile_path)
    path = write_report(
        profile, output, conductance=_sources(conductance), adc=_sources(adc),
        column_map=column_map or None, seed=seed, max_ks=max_ks, max_tv=max_tv,
        profile_path=profile_path,
    )
    click.echo(f"wrote {path}")
