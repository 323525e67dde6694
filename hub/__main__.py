"""`python -m hub {convert,publish,download,push-results}`: get RMT's official weights onto the Hub and back, and
benchmark results up as a dataset repo.

Errors end in one sentence on stderr and exit status 1 (2 for bad arguments and for an input path that is missing or
cannot be read, 141 when the reader of standard output went away), never a traceback: the policy every command line of
the project shares (common/cli.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from common.cli import EXIT_OK, OneLineParser, emit, exit_interrupted, run_cli
from common.paths import WriteError, check_input_path, ignore_file_size_signal
from zoo import (
    HUB_REVISION_ENV,
    RMT_HUB_ORG_ENV,
    CheckpointError,
    CheckpointMismatchError,
    UnknownModelError,
    WeightsUnavailableError,
    fetch_weights,
)

from .card import ResultsError
from .convert import ConversionError, convert
from .publish import PublishError, check_repo_id, plan_upload, publish

_EXPECTED = (
    CheckpointError,
    CheckpointMismatchError,
    UnknownModelError,
    WeightsUnavailableError,
    ConversionError,
    PublishError,
    ResultsError,
)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m hub", description=" ".join(__doc__.split("\n\n", 1)[0].split()))
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="a released checkpoint to model.safetensors + config.json + README.md")
    c.add_argument("source", type=Path, help="the official checkpoint (.pth or .safetensors)")
    c.add_argument("out_dir", type=Path, help="folder to write (created if missing; must be empty unless --force)")
    c.add_argument("--model", required=True, help="zoo model name, e.g. rmt_s")
    c.add_argument("--results", type=Path, help="benchmark harness results JSONL, for measured numbers on the card")
    c.add_argument(
        "--org", help=f"Hub organisation the RMT repo will live in (default: ${RMT_HUB_ORG_ENV} or the zoo's)"
    )
    c.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR whole (no old file is kept)")
    c.add_argument(
        "--results-dataset", metavar="ORG/NAME", help="dataset repo of the full benchmark, linked from the card"
    )

    p = sub.add_parser("publish", help="upload a converted folder's regular files (never links) to a Hub repo")
    p.add_argument("folder", type=Path)
    p.add_argument(
        "--repo", help="ORG/NAME (default for RMT: where zoo.load looks for it; required for upstream families)"
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded where, and stop")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the one saved by `hf auth login`)")
    p.add_argument("--message", help="commit message")

    d = sub.add_parser("download", help="fetch a model's weights into the Hub cache and print their path")
    d.add_argument("model")
    d.add_argument("--revision", help=f"branch, tag or commit (default: ${HUB_REVISION_ENV} or main)")
    d.add_argument("--org", help=f"Hub organisation of the RMT repos (default: ${RMT_HUB_ORG_ENV} or the zoo's)")

    r = sub.add_parser("push-results", help="upload benchmark results (rows, CSV, table, plot, card) as a dataset repo")
    r.add_argument(
        "results", nargs="+", metavar="RESULTS", help="results JSONL files (with their shards), read in order"
    )
    r.add_argument("--repo", required=True, metavar="ORG/NAME", help="the dataset repo (created if missing)")
    r.add_argument("--all", action="store_true", help="every row, not only the newest per measurement")
    r.add_argument(
        "--dry-run", action="store_true", help="say what would be uploaded where (rows, files, sizes), upload nothing"
    )
    r.add_argument("--public", action="store_true", help="create the dataset repo public (default: private)")
    r.add_argument(
        "--include-host", action="store_true", help="publish host names and local paths too (default: redacted)"
    )
    r.add_argument("--token", help="Hub token (default: HF_TOKEN or the one saved by `hf auth login`)")
    return parser


def _push_results(args: argparse.Namespace) -> None:
    """The rows `bench.py report RESULTS...` shows (newest per measurement, table order), uploaded whole."""
    from bench import latest_rows
    from bench.report import table_order
    from bench.results import check_results_paths, iter_results

    from .results import push_results

    check_repo_id(args.repo)
    check_results_paths(args.results)
    rows = [row for path in args.results for row in iter_results(path)]
    rows = table_order(rows if args.all else latest_rows(rows))
    kept = dict(sources=args.results, dry_run=args.dry_run, private=not args.public, token=args.token)
    _say(push_results(rows, args.repo, include_host=args.include_host, **kept))


def _convert(args: argparse.Namespace) -> None:
    from bench.results import check_results_paths

    if args.results_dataset is not None:
        check_repo_id(args.results_dataset)
    check_input_path(args.source, "SOURCE")
    check_results_paths([args.results] if args.results is not None else [], "--results")
    done = convert(
        args.model, args.source, args.out_dir, results=args.results, org=args.org, force=args.force,
        results_dataset=args.results_dataset,
    )  # fmt: skip
    prov = done.config["provenance"]
    _say(
        f"Took the {prov['weights']} (entry '{prov['entry']}') of {args.source.name}: they load into {args.model} "
        f"with no missing or unexpected keys and give the source's outputs (max abs difference "
        f"{prov['check']['max_abs_output_diff']:.3g})."
    )
    measured = f"{done.measured_rows} measured rows" if done.measured_rows else "no measured numbers"
    _say(f"Wrote {done.out_dir}/model.safetensors, config.json and README.md ({measured} on the card).")


def _publish(args: argparse.Namespace) -> None:
    check_input_path(args.folder, "FOLDER", folder=True)
    plan = plan_upload(args.folder, args.repo, private=args.private)
    if plan.warning:
        print(f"warning: {plan.warning}", file=sys.stderr)
    _say(plan.describe())
    if args.dry_run:
        _say("Dry run: nothing was uploaded.")
        return
    _say(f"Uploaded: {publish(plan, token=args.token, commit_message=args.message)}")


def _download(args: argparse.Namespace) -> None:
    import zoo

    _say(str(fetch_weights(zoo.info(args.model), revision=args.revision, org=args.org)))


def _say(text: str) -> None:
    """A line on standard output, through the shared writer (a reader gone, a full disk)."""
    emit(text + "\n")


class _SystemError(Exception):
    """An OSError (writing OUT_DIR, reading a folder) as the system's own one-line reason."""


class _Terminated(BaseException):
    """SIGTERM, raised where the process is, so a conversion's `finally` removes its staging folder (a BaseException,
    so no `except Exception` on the way swallows it)."""


def _terminate(signum: int, _frame: object) -> None:
    raise _Terminated(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Exit codes as for every command line of the project (common/cli.py): 1 for an error said in one sentence, 2 for
    bad arguments or an input path that cannot be read, 141 when the reader of standard output went away, 143 when
    stopped by SIGTERM (a conversion leaves no partial folder)."""

    def body() -> int:
        args = _parser().parse_args(argv)
        run = {"convert": _convert, "publish": _publish, "download": _download, "push-results": _push_results}
        ignore_file_size_signal()
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
        try:
            run[args.command](args)
        except _Terminated:
            print("error: stopped by SIGTERM; nothing was left half-written.", file=sys.stderr)
            return exit_interrupted(signal.SIGTERM)
        except WriteError:
            raise
        except OSError as e:
            raise _SystemError(f"{e.strerror or e}{f': {e.filename}' if e.filename else ''}.") from None
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
        return EXIT_OK

    return run_cli(body, failures=(*_EXPECTED, WriteError, _SystemError))


if __name__ == "__main__":
    sys.exit(main())
