"""Child process that runs SentencePieceTrainer.train(**options) from a JSON file.

Training runs in its own process so the parent can read SentencePiece's C++ log line by line
(progress, lowest merge frequency) and measure the trainer's peak memory.
"""
import json
import sys

import sentencepiece as spm


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as fh:
        options = json.load(fh)
    spm.SentencePieceTrainer.train(**options)


if __name__ == "__main__":
    main()
