"""`python -m bench`: run the benchmark sections, print the table, write the report.

Sections are modules of this package with `run(bench: Bench) -> Section`. The
core ones always run; the optional ones (observability, soak, image) run when
their module exists in this checkout. `--smoke` runs everything in seconds to
prove the harness works (the figures then mean nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from . import deps
from .harness import ROOT, Bench, Settings, VerificationError, log
from .report import Section, chart, machine, markdown, terminal

CORE_SECTIONS = ("unary", "streaming", "overload", "memory")
OPTIONAL_SECTIONS = ("observability", "soak", "image", "instructions")
DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"


def available_sections() -> list[str]:
    optional = [name for name in OPTIONAL_SECTIONS if importlib.util.find_spec(f"bench.{name}") is not None]
    return [*CORE_SECTIONS, *optional]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long run that checks the harness only")
    parser.add_argument("--rounds", type=int, help=f"rounds per comparison (default {Settings.rounds})")
    parser.add_argument("--duration", type=float,
                        help=f"seconds per measured h2load run (default {Settings.duration:g})")
    parser.add_argument("--sections", help=f"comma-separated subset of: {', '.join(available_sections())}")
    parser.add_argument("--no-nat", action="store_true", help="leave out NeMo Agent Toolkit's nat serve")
    parser.add_argument("--profile", choices=("runtime", "metrics", "traced", "bare"),
                        help="instead of benchmarking, profile one contender under unary load with py-spy")
    parser.add_argument("--out", type=Path,
                        help="report to write (a PNG chart is written beside it); default "
                             "docs/benchmarks.md for a full run, a temporary folder for --smoke or --sections")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    settings = Settings.for_smoke() if args.smoke else Settings()
    changes = {}
    if args.rounds:
        changes["rounds"] = args.rounds
    if args.duration:
        changes["duration"] = args.duration
    if args.no_nat:
        changes["nat"] = False
    return dataclasses.replace(settings, **changes)


def report_path(args: argparse.Namespace) -> Path:
    """Where the report goes: `--out`, else docs/benchmarks.md for a full run only. A smoke
    run's figures mean nothing and a partial run's leave sections out, so either writes
    to a temporary folder instead of replacing the tracked report."""
    if args.out is not None:
        return args.out
    if args.smoke or args.sections:
        return Path(tempfile.mkdtemp(prefix="agent-runtime-bench-")) / DEFAULT_OUT.name
    return DEFAULT_OUT


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    names = available_sections()
    if args.sections:
        wanted = [name.strip() for name in args.sections.split(",") if name.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise SystemExit(f"unknown sections {unknown}; available: {', '.join(names)}")
        names = wanted
    deps.ensure_h2load()
    # SIGTERM unwinds like Ctrl-C, so the servers started so far are stopped, not orphaned
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    bench = Bench(settings)
    if args.profile:
        from . import profile

        try:
            profile.run(bench, deps.cache_dir(), args.profile)
        finally:
            bench.close()
        return 0
    header = machine()
    sections: list[Section] = []
    failures = 0
    try:
        for name in names:
            log(f"== section {name}")
            try:
                sections.append(importlib.import_module(f"bench.{name}").run(bench))
            except (VerificationError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                # the other sections still run and are reported; the run fails at the end
                failures += 1
                log(f"bench: section {name} failed: {exc}")
                sections.append(Section(f"{name} (did not complete)", notes=[f"Failed: {exc}"]))
                for server in list(bench.servers):
                    bench.stop(server)
    finally:
        bench.close()
    print(terminal(sections))
    out = report_path(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture = out.with_suffix(".png")
    chart(sections, picture)
    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    out.write_text(markdown(sections, command=command.strip(), commands=bench.commands, header=header,
                            chart=picture.name))
    targets = [t for s in sections for t in s.targets]
    failed, noisy = sum(not t.passed for t in targets), sum(t.noisy for t in targets)
    kept = "" if out == DEFAULT_OUT or args.out else f" ({DEFAULT_OUT.relative_to(ROOT)} is written by full runs only)"
    log(f"wrote {out} and {picture}{kept}; {failed} of {len(targets)} targets failed"
        + (f", {noisy} with a 95 % confidence interval that reaches past the limit" if noisy else "")
        + (f"; {failures} sections did not complete" if failures else ""))
    return 1 if failures else 0
