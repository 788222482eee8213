"""Content type of a document: `code`, `docs` (documentation and markup) or `prose` (web text).

The type decides which rule set judges a document (configs/data/rules/: code.yaml, docs.yaml, and
the per-language prose rules), because rules made for web pages misfire on the rest: C4's curly
brace rule removes every C example in a manual, FineWeb's duplicate-line rule removes plays.

Both detectors look at lines, so they work without a file name and in any natural language:
* code: the share of non-empty lines that look like code (a comment; a keyword or preprocessor
  directive at the start, an assignment, a call, a line ending in `; { } ( [ \\`, or in `, :` after
  code punctuation; never a line of Chinese prose), with enough symbols;
* docs: lines of markup that only documentation uses (reST titles and directives, Markdown
  headings (between blank lines: a `# comment` block is not one) and fences, POD commands, man-page
  section names, LaTeX and Texinfo commands, numbered section titles such as "10.8. DHCP", API
  reference labels on a line of their own: "Syntax:", "Parameters:", "Example:"); and the steps of
  a procedure, as help pages write them: lines that start with a UI action ("Click Print.",
  "Choose Format - Styles.", "Click on a color entry", "点击“确定”。", optionally numbered), at
  least one of them a sentence (end punctuation, or five words or more): shop buttons alone
  ("Select your size", "Choose your color", "Click Add to cart") are labels, not a procedure.
Dense markup (a README, a reST page of examples) makes docs first; then enough code lines make
code; then any markup or procedure steps make docs; the rest is prose.
"""
from __future__ import annotations

import re

from .config import ContentTypeConfig
from .lines import SENTENCE_END

CODE_KEYWORD_RE = re.compile(
    r"^\s*(?:(?:def|class|import|from|return|if|elif|else|for|while|try|except|finally|with|raise|yield|assert|"
    r"async|await|lambda|pass|break|continue|global|nonlocal|del|switch|case|default|do|goto|struct|union|enum|"
    r"typedef|static|const|extern|inline|volatile|unsigned|signed|void|int|char|long|short|float|double|bool|auto|"
    r"public|private|protected|template|typename|namespace|using|virtual|override|fn|let|mut|impl|pub|var|function|"
    r"package|func|interface|sub|my|our|local|end|module|require|include|export|throw|new|delete)\b"
    r"|#\s*(?:include|define|if|ifdef|ifndef|endif|else|elif|pragma|undef)\b|@\w|#!/)")
CODE_END_RE = re.compile(r"[;{}(\[\\]\s*$|^\s*[})\]]")
# "," and ":" also end wrapped prose: they count only on a line with code punctuation
# (arguments, dict entries, Python block headers).
CODE_SOFT_END_RE = re.compile(r"^(?=.*[=(\[\]\"'_]).*[,:]\s*$")
HAN_RUN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]{3}")
CODE_ASSIGN_RE = re.compile(r"^\s*[\w.\[\]\"'*]+\s*(?:[-+*/|&%^]|<<|>>|:)?=(?!=)\s*\S")
CODE_CALL_RE = re.compile(r"\w\([^()]*\)\s*;?\s*$")
CODE_COMMENT_RE = re.compile(r"^\s*(?://|/\*|\*(?:\s|/|$)|#(?![#!])\S?|--\s|;;)")
CODE_SYMBOL_RE = re.compile(r"[{}\[\]();=<>]")

_TITLE_UNDERLINE = r"(?:={3,}|-{3,}|~{3,}|\^{3,}|\*{3,}|\+{3,}|#{3,})"
DOC_MARKUP_RE = re.compile(
    r"^(?:\s*\.\. [\w:-]+::|\.\. _[^:]+:|" + _TITLE_UNDERLINE + r"\s*$"          # reST directives, targets, titles
    r"|(?<=\n\n)#{1,6} \S[^\n]*(?=\n\n)|\s*```|\s*~~~"                              # Markdown headings, fences
    r"|=(?:head[1-6]|item|over|back|pod|cut|encoding|begin|end|for)\b"           # POD
    r"|(?:NAME|SYNOPSIS|DESCRIPTION|OPTIONS|SEE ALSO|EXIT STATUS|ENVIRONMENT|FILES|BUGS|AUTHORS?)\s*$"  # man
    r"|(?:名称|总览|描述|选项|参见|名稱|總覽|選項|參見)\s*$"
    r"|\.(?:TH|SH|SS|TP|PP|IP|BR|RB|IR|nf|fi)\b"                                # groff man source
    r"|\\(?:section|subsection|chapter|begin|end|item)\b"                        # LaTeX
    r"|@(?:node|chapter|section|subsection|deffn|example|end)\b"                 # Texinfo
    r"|\d+\.\d+(?:\.\d+)*\.?[ \u00a0]+[^\n]{1,80}(?<![.。!?:;,])$"                 # "2.4. Create HTML Files": a manual's section
    r"|(?:Syntax|Parameters|Arguments|Return value|Returns|Example|Examples|Usage|"     # API reference labels
    r"语法|參數|参数|返回值|示例|範例)[:：]?[ \t]*$)",
    re.MULTILINE)
# "Click here" / "Select this" are web calls to action, not a step in a procedure.
PROCEDURE_STEP_RE = re.compile(
    r"^[ \t]*(?:\d{1,2}[.)][ \t]+)?(?:(?:Click|Double-click|Right-click|Choose|Select|Press|Tap|Drag|Go to|Open the)"
    r"[ \t]+(?!here\b|this\b|now\b|the link\b)\S"
    r"|(?:点击|单击|双击|右击|右键单击|选择|选取|按下|打开|轻点|點擊|點選|按一下|選擇|選取|開啟)\S)",
    re.MULTILINE)
STEP_END = SENTENCE_END + ("。", "！", "：", "；")
STEP_MIN_WORDS = 5


def procedure_steps(lines: list[str]) -> int:
    steps = [line.strip() for line in lines if PROCEDURE_STEP_RE.match(line)]
    if any(step.endswith(STEP_END) or len(step.split()) >= STEP_MIN_WORDS for step in steps):
        return len(steps)
    return 0


# What a line must start or end with (whitespace aside) for each pattern to match: a pattern runs
# only on lines where it can, which leaves the result as it is and saves most regex calls.
KEYWORD_STARTS = frozenset("abcdefghijklmnopqrstuvwxyz#@")
END_CHARS, CLOSE_STARTS, SOFT_END_CHARS = frozenset(";{}([\\"), frozenset("})]"), frozenset(",:")


def looks_like_code(line: str) -> bool:
    if CODE_COMMENT_RE.match(line):
        return True
    if not line.isascii() and HAN_RUN_RE.search(line):   # Chinese prose that mentions a function() or ends in ";"
        return False
    start, end = line.lstrip()[:1], line.rstrip()[-1:]
    return bool((start in KEYWORD_STARTS and CODE_KEYWORD_RE.match(line))
                or ((end in END_CHARS or start in CLOSE_STARTS) and CODE_END_RE.search(line))
                or (end in SOFT_END_CHARS and CODE_SOFT_END_RE.match(line))
                or ("=" in line and CODE_ASSIGN_RE.match(line))
                or (end == ")" and CODE_CALL_RE.search(line)))


def code_line_ratio(lines: list[str]) -> float:
    return sum(map(looks_like_code, lines)) / (len(lines) or 1)


def detect_content_type(text: str, cfg: ContentTypeConfig) -> tuple[str, dict]:
    """The document's content type and the facts it was decided on (kept in annotations)."""
    lines = [line for line in text.split("\n") if line.strip()]
    line_ratio = code_line_ratio(lines)
    # Symbols outside comments: a licence header does not make a file less code.
    code_text = "\n".join(line for line in lines if not CODE_COMMENT_RE.match(line))
    nonspace = len(code_text) - code_text.count(" ") - code_text.count("\n") - code_text.count("\t")
    symbol_ratio = len(CODE_SYMBOL_RE.findall(code_text)) / (nonspace or 1)
    markup = len(DOC_MARKUP_RE.findall(text))
    steps = procedure_steps(lines)
    facts = {"code_line_ratio": round(line_ratio, 3), "markup_lines": markup, "procedure_steps": steps}
    if markup >= cfg.docs_min_markup_lines and markup / len(lines) >= cfg.docs_min_markup_ratio:
        return "docs", facts       # a README or manual page full of examples is still documentation
    if (len(lines) >= cfg.code_min_lines and line_ratio >= cfg.code_min_line_ratio
            and symbol_ratio >= cfg.code_min_symbol_ratio):
        return "code", facts
    if markup + steps >= cfg.docs_min_markup_lines:
        return "docs", facts
    return "prose", facts
