"""Content type of a document: `code`, `docs` (documentation and markup) or `prose` (web text).

The type decides which rule set judges a document (configs/data/rules/: code.yaml, docs.yaml, and
the per-language prose rules), because rules made for web pages misfire on the rest: C4's curly
brace rule removes every C example in a manual, FineWeb's duplicate-line rule removes plays.

Both detectors look at lines, so they work without a file name and in any natural language:
* code: the share of non-empty lines that look like code (a keyword or preprocessor directive at
  the start, an assignment, a call, or a line ending in `; { } ( [ , : \\`), with enough symbols;
* docs: lines of markup that only documentation uses (reST titles and directives, Markdown
  headings and fences, POD commands, man-page section names, LaTeX and Texinfo commands).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

CODE_KEYWORD_RE = re.compile(
    r"^\s*(?:(?:def|class|import|from|return|if|elif|else|for|while|try|except|finally|with|raise|yield|assert|"
    r"async|await|lambda|pass|break|continue|global|nonlocal|del|switch|case|default|do|goto|struct|union|enum|"
    r"typedef|static|const|extern|inline|volatile|unsigned|signed|void|int|char|long|short|float|double|bool|auto|"
    r"public|private|protected|template|typename|namespace|using|virtual|override|fn|let|mut|impl|pub|var|function|"
    r"package|func|interface|sub|my|our|local|end|module|require|include|export|throw|new|delete)\b"
    r"|#\s*(?:include|define|if|ifdef|ifndef|endif|else|elif|pragma|undef)\b|@\w|#!/)")
CODE_END_RE = re.compile(r"[;{}(\[,:\\]\s*$|^\s*[})\]]")
CODE_ASSIGN_RE = re.compile(r"^\s*[\w.\[\]\"'*]+\s*(?:[-+*/|&%^]|<<|>>|:)?=(?!=)\s*\S")
CODE_CALL_RE = re.compile(r"\w\([^()]*\)\s*;?\s*$")
CODE_COMMENT_RE = re.compile(r"^\s*(?://|/\*|\*(?:\s|/|$)|#(?![#!])\S?|--\s|;;)")
CODE_SYMBOL_RE = re.compile(r"[{}\[\]();=<>]")

_TITLE_UNDERLINE = r"(?:={3,}|-{3,}|~{3,}|\^{3,}|\*{3,}|\+{3,}|#{3,})"
DOC_MARKUP_RE = re.compile(
    r"^(?:\s*\.\. [\w:-]+::|\.\. _[^:]+:|" + _TITLE_UNDERLINE + r"\s*$"          # reST directives, targets, titles
    r"|#{1,6} \S|\s*```|\s*~~~"                                                  # Markdown headings, fences
    r"|=(?:head[1-6]|item|over|back|pod|cut|encoding|begin|end|for)\b"           # POD
    r"|(?:NAME|SYNOPSIS|DESCRIPTION|OPTIONS|SEE ALSO|EXIT STATUS|ENVIRONMENT|FILES|BUGS|AUTHORS?)\s*$"  # man
    r"|(?:名称|总览|描述|选项|参见|名稱|總覽|選項|參見)\s*$"
    r"|\.(?:TH|SH|SS|TP|PP|IP|BR|RB|IR|nf|fi)\b"                                # groff man source
    r"|\\(?:section|subsection|chapter|begin|end|item)\b"                        # LaTeX
    r"|@(?:node|chapter|section|subsection|deffn|example|end)\b)",               # Texinfo
    re.MULTILINE)


@dataclass
class ContentTypeConfig:
    code_min_line_ratio: float = 0.4     # lines that look like code / non-empty lines
    code_min_symbol_ratio: float = 0.02  # {}[]();=<> / non-space characters
    code_min_lines: int = 3              # shorter texts (quotes, titles) are never code
    docs_min_markup_lines: int = 2       # documentation markup lines needed to call a text docs


def code_line_ratio(lines: list[str]) -> float:
    hits = sum(1 for line in lines if CODE_KEYWORD_RE.match(line) or CODE_END_RE.search(line)
               or CODE_ASSIGN_RE.match(line) or CODE_COMMENT_RE.match(line) or CODE_CALL_RE.search(line))
    return hits / (len(lines) or 1)


def detect_content_type(text: str, cfg: ContentTypeConfig) -> tuple[str, dict]:
    """The document's content type and the facts it was decided on (kept in annotations)."""
    lines = [line for line in text.split("\n") if line.strip()]
    nonspace = len(text) - text.count(" ") - text.count("\n") - text.count("\t")
    line_ratio = code_line_ratio(lines)
    symbol_ratio = len(CODE_SYMBOL_RE.findall(text)) / (nonspace or 1)
    markup = len(DOC_MARKUP_RE.findall(text))
    facts = {"code_line_ratio": round(line_ratio, 3), "markup_lines": markup}
    if (len(lines) >= cfg.code_min_lines and line_ratio >= cfg.code_min_line_ratio
            and symbol_ratio >= cfg.code_min_symbol_ratio):
        return "code", facts
    if markup >= cfg.docs_min_markup_lines:
        return "docs", facts
    return "prose", facts
