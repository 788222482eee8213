"""`python -m pretrain` (not yet available: built by a later issue)."""
import sys


def main() -> None:
    print("pretrain: not yet available", file=sys.stderr)


if __name__ == "__main__":
    main()
