"""Show every host's metrics: a table (default), JSON lines or Prometheus text.

    shoal metrics TARGETS [--sort cpu|mem|load|disk] [--json | --prometheus]

The table has one row per host; a host without metrics shows why instead.
`--json` prints one object per host per line ({"host", "metrics"} or
{"host", "error"}); `--prometheus` prints the text exposition format with a
`host` label on every sample, for a scraper reading a file or a pipe
(`--textfile PATH` replaces PATH atomically, for node_exporter's textfile
collector).

Exit status: 0 every host answered; 1 a host refused (e.g. its key may not
read metrics); 255 a host was unreachable; 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from shoal.protocol.errors import ConfigError

from shoal.controller.term.display import Display
from shoal.controller.metricsview import SORT_KEYS, format_json_lines, format_prometheus, format_table
from shoal.controller.monitor import MetricsRound, gather_metrics
from shoal.controller.cli.options import add_connect_options, add_target_options, connect_options_from_args, run_with, targets_from_args

__all__ = ["add_arguments", "run", "render", "write_atomically"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    g = parser.add_argument_group("output")
    g.add_argument("--sort", choices=tuple(SORT_KEYS), help="table rows by this metric, highest first")
    form = g.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="one JSON object per host per line")
    form.add_argument("--prometheus", action="store_true", help="Prometheus text exposition format")
    g.add_argument("--textfile", metavar="PATH",
                   help="write the output to PATH (atomically replaced) instead of stdout")
    add_connect_options(parser)


def render(args: argparse.Namespace, result: MetricsRound) -> str:
    """The chosen view of one round of snapshots."""
    if args.json:
        return format_json_lines(result.snapshots, result.error_codes)
    if args.prometheus:
        return format_prometheus(result.snapshots)
    return format_table(result.for_table(), sort=args.sort)


def write_atomically(path: str, text: str) -> None:
    """Replace `path` with `text` so a reader never sees half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".shoal-metrics-", dir=directory)
    except OSError as exc:
        raise ConfigError(f"cannot write in {directory}: {exc.strerror}", "--textfile") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        os.unlink(tmp)
        raise ConfigError(f"cannot write {path}: {exc.strerror}", "--textfile") from exc


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    if words:
        raise ConfigError(f"unexpected arguments: {' '.join(words)}", "metrics")
    targets = targets_from_args(args)
    options = connect_options_from_args(args)
    result = run_with(options, gather_metrics(targets, options, args.fanout))
    text = render(args, result)
    if args.textfile:
        write_atomically(args.textfile, text)
    else:
        display.out(text.encode("utf-8", "replace"))
    return result.status
