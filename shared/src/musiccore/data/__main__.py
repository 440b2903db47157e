"""Command line of the offline data kit.

    python -m musiccore.data build  --root DIR [--tunes N --clips N --songs N --seed S --clip-seconds X
                                               --sample-rate R --essen --only tunes,clips,songs --workers W]
    python -m musiccore.data info   --root DIR
    python -m musiccore.data verify --root DIR

Exit codes: 0 done (verify: every manifest line is a valid row whose files exist and match their checksums);
1 a problem with the kit: verify found bad lines, malformed rows, missing/empty/mismatching files or no manifest at
all; info found a damaged kit.json/report.json; build fell short of a requested count or met a damaged kit (each
problem is printed as one line naming the file, line and field); 2 a bad command line (argparse).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .builder import DEFAULTS, build, info, verify
from .manifest import KINDS, DataKitError, kit_root


def _kinds(text: str) -> list[str]:
    out = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in out if k not in KINDS]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"--only takes a comma-separated subset of {','.join(KINDS)}, got {text!r}")
    return out


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return n


def _positive(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            v = 0
        if not v > 0 or v != v or v == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m musiccore.data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build or update the kit (resumable; re-running does no work)")
    b.add_argument("--root", default=None, help="kit folder (default: $MUSIC_DATA_DIR, else the checkout's data/kit, "
                   "else ~/.cache/musiccore/datakit)")
    b.add_argument("--tunes", type=_count, default=DEFAULTS["tunes"], help="number of ABC tunes (0 skips)")
    b.add_argument("--clips", type=_count, default=DEFAULTS["clips"], help="number of rendered clips (0 skips)")
    b.add_argument("--songs", type=_count, default=None,
                   help=f"number of sung songs (0 skips; default: as many as the kit has, {DEFAULTS['songs']} for a "
                   "new kit; beyond the 348 sources, derived renderings, see musiccore.data.songs)")
    b.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    b.add_argument("--clip-seconds", type=_positive(float), default=DEFAULTS["clip_seconds"])
    b.add_argument("--sample-rate", type=_positive(int), default=DEFAULTS["sample_rate"], help="clip sample rate (mono)")
    b.add_argument("--essen", action="store_true",
                   help="also use the Essen folk songs (NON-COMMERCIAL licence; noted in the kit's README)")
    b.add_argument("--only", type=_kinds, default=None, help="comma-separated kinds to build (tunes,clips,songs)")
    b.add_argument("--workers", type=_positive(int), default=None, help="worker processes (default: usable CPUs, max 8)")
    b.add_argument("--music21-check", action="store_true",
                   help="also parse every tune with music21 when validating (about 0.1 s per tune)")
    b.add_argument("--retry-bad", action="store_true", help="retry items a previous build reported bad")
    for name, hlp in (("info", "print counts, splits and parameters of a kit"),
                      ("verify", "check every file of the kit against its manifest checksum")):
        s = sub.add_parser(name, help=hlp)
        s.add_argument("--root", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        return _run(args)
    except DataKitError as e:  # a damaged kit file: one line naming it, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e.filename or kit_root(args.root)}: {e.strerror or e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "build":
        rep = build(args.root, tunes=args.tunes, clips=args.clips, songs=args.songs, seed=args.seed,
                    clip_seconds=args.clip_seconds, sample_rate=args.sample_rate, essen=args.essen,
                    only=args.only, workers=args.workers, retry_bad=args.retry_bad,
                    music21_check=args.music21_check)
        print(f"kit: {rep['root']}")
        for k, c in rep["kinds"].items():
            extra = " (songs step unavailable)" if c.get("unavailable") else ""
            print(f"  {k:6s} requested {c.get('requested', 0):5d}  built {c.get('built', 0):5d}  "
                  f"reused {c.get('reused', 0):5d}  bad {c.get('bad', 0):4d}  "
                  f"{rep['seconds'].get(k, 0):7.1f} s ({rep['cpu_seconds'].get(k, 0):.1f} s CPU){extra}")
        cpu = rep.get("cpu_seconds", {}).get("total", 0)
        print(f"  total {rep['seconds'].get('total', 0):.1f} s wall, {cpu:.1f} s CPU; "
              f"bad items listed in {kit_root(args.root) / 'report.json'}")
        short = [k for k, c in rep["kinds"].items() if c.get("built", 0) + c.get("reused", 0) < c.get("requested", 0)
                 and not c.get("unavailable")]
        return 1 if short else 0
    if args.cmd == "info":
        print(json.dumps(info(args.root), indent=2))
        return 0
    problems = verify(args.root)
    if not problems:
        print(f"{kit_root(args.root)}: no manifest found (build the kit first)")
        return 1
    n_bad = 0
    for k, probs in problems.items():
        print(f"{k}: {'OK' if not probs else f'{len(probs)} problem(s)'}")
        for line in probs[:20]:
            print(f"  {line}")
        if len(probs) > 20:
            print(f"  ... and {len(probs) - 20} more")
        n_bad += len(probs)
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
