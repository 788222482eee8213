"""`python -m checkpoints_tools` (not yet available: built by a later issue)."""
import sys


def main() -> None:
    print("checkpoints_tools: not yet available", file=sys.stderr)


if __name__ == "__main__":
    main()
