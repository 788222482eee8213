"""`python -m stack_common verify SHARD_DIR`: check a shard directory against its manifest."""
from __future__ import annotations

import argparse

from .errors import report_user_errors
from .shards import read_manifest, shard_paths


@report_user_errors
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stack_common")
    sub = parser.add_subparsers(dest="cmd", required=True)
    verify = sub.add_parser("verify", help="check sizes and sha256 of every shard in a manifest")
    verify.add_argument("shard_dir")
    args = parser.parse_args(argv)
    if args.cmd == "verify":
        manifest = read_manifest(args.shard_dir)
        paths = shard_paths(args.shard_dir, verify=True)
        print(f"{args.shard_dir}: {len(paths)} shards, {manifest['rows']} rows, {manifest['bytes']} bytes, all verified")


if __name__ == "__main__":
    main()
