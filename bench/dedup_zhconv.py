"""Traditional -> simplified Chinese for the dedup benchmark, run in a bench-only interpreter.

stdin: JSON list of texts; stdout: JSON list of converted texts. Uses zhconv, else opencc.
"""
import json
import sys


def converter():
    try:
        import zhconv
        return lambda text: zhconv.convert(text, "zh-cn")
    except ImportError:
        import opencc
        cc = opencc.OpenCC("t2s")
        return cc.convert


if __name__ == "__main__":
    convert = converter()
    json.dump([convert(t) for t in json.load(sys.stdin)], sys.stdout, ensure_ascii=False)
