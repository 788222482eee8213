"""`make demo`: the whole road on the bundled sample corpus (stages fill in as issues land)."""
import sys


def main() -> int:
    print("demo: stages not yet available")
    return 0


if __name__ == "__main__":
    sys.exit(main())
