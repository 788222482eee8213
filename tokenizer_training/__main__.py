"""`python -m tokenizer_training` (not yet available: built by a later issue)."""
import sys


def main() -> None:
    print("tokenizer_training: not yet available", file=sys.stderr)


if __name__ == "__main__":
    main()
