"""The per-document stages. Each is a callable `step(doc) -> None | reason`: it may change the
document (text, lang, score, annotations) and returns a reason when the document is removed.
A unit of input runs through the stages of a segment in one pass; every stage keeps its own
counters so the funnel is reported stage by stage."""
from __future__ import annotations

import time
from collections import Counter

from .clean_lines import LineCleaner
from .config import PipelineConfig
from .filters import build_rule_sets, rule_family
from .lang import annotate_language, build_detector, kept, lang_model_identity
from .normalize import Normalizer
from .quality import label_probability, load_model, model_sha256, model_text
from .readers import Document


def utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class Step:
    name = ""

    def __init__(self) -> None:
        self.docs_in = self.docs_out = self.bytes_in = self.bytes_out = 0
        self.excluded: Counter = Counter()
        self.seconds = 0.0

    def apply(self, doc: Document) -> str | None:
        raise NotImplementedError

    def __call__(self, doc: Document, size: int) -> tuple[str | None, int]:
        """Run the step with bookkeeping; returns (reason, size of the text afterwards)."""
        start = time.perf_counter()
        self.docs_in += 1
        self.bytes_in += size
        before = doc.text
        reason = self.apply(doc)
        if doc.text is not before:
            size = utf8_len(doc.text)
        if reason is None:
            self.docs_out += 1
            self.bytes_out += size
        else:
            self.excluded[reason] += 1
        self.seconds += time.perf_counter() - start
        return reason, size

    def extras(self) -> dict:
        return {}

    def stats(self) -> dict:
        return {"stage": self.name, "docs_in": self.docs_in, "docs_out": self.docs_out, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "excluded": dict(sorted(self.excluded.items())),
                "seconds": round(self.seconds, 4), **self.extras()}


class Normalize(Step):
    """Reports, for the documents it keeps, how many each reason changed (`changes`) and the
    characters each removed (`chars_removed`)."""
    name = "normalize"

    def __init__(self, cfg: PipelineConfig):
        super().__init__()
        self.cfg = cfg.normalize
        self.normalizer = Normalizer(self.cfg)
        self.changed = 0
        self.changes: Counter = Counter()
        self.chars_removed: Counter = Counter()

    def apply(self, doc: Document) -> str | None:
        text, changes = self.normalizer(doc.text)
        if not text.strip():
            return "normalize.empty"
        if changes:
            self.changed += 1
            self.changes.update(changes.keys())
            self.chars_removed.update(changes)
            if self.cfg.keep_original:
                doc.annotations["original_text"] = doc.text
            doc.text = text
        return None

    def extras(self) -> dict:
        return {"docs_changed": self.changed, "changes": dict(sorted(self.changes.items())),
                "chars_removed": dict(sorted(self.chars_removed.items()))}


class Annotate(Step):
    """Labels each document's language (see data_pipeline.lang) and excludes the languages not in
    `lang.keep_langs` as `<lang>:lang.not_kept`. Reports every language seen (`langs`), what
    decided (`lang_by`: the content type, the model or the script statistics), the content types
    (`content_types`: code / docs / prose) and the model's identity."""
    name = "annotate"

    def __init__(self, cfg: PipelineConfig):
        super().__init__()
        self.cfg = cfg.lang
        self.content_cfg = cfg.content_type
        self.detector = build_detector(self.cfg)
        self.langs: Counter = Counter()
        self.decided_by: Counter = Counter()
        self.content_types: Counter = Counter()

    def apply(self, doc: Document) -> str | None:
        doc.lang, facts = annotate_language(doc.text, self.cfg, self.detector, self.content_cfg)
        doc.annotations.update(facts)
        self.langs[doc.lang] += 1
        self.decided_by[facts["lang_by"]] += 1
        self.content_types[facts["content_type"]] += 1
        return None if kept(doc.lang, self.cfg) else f"{doc.lang}:lang.not_kept"

    def extras(self) -> dict:
        identity = lang_model_identity(self.cfg) or {"model": "script"}
        return {"langs": dict(sorted(self.langs.items())), "lang_by": dict(sorted(self.decided_by.items())),
                "content_types": dict(sorted(self.content_types.items())),
                "keep_langs": list(self.cfg.keep_langs), "lang_model": " ".join(
                    v for k, v in identity.items() if k in ("model", "package")),
                "lang_model_sha256": identity.get("sha256")}


class CleanLines(Step):
    """Reports, for the documents it keeps, the lines removed per reason (`lines_removed`), the
    documents each reason changed (`changes`) and the characters it removed (`chars_removed`)."""
    name = "clean_lines"

    def __init__(self, cfg: PipelineConfig):
        super().__init__()
        self.cleaners = {lang: LineCleaner((rules or {}).get("clean_lines"), f"rules.{lang}.clean_lines")
                         for lang, rules in cfg.rules.items()}
        self.docs_changed = 0
        self.lines_removed: Counter = Counter()
        self.changes: Counter = Counter()
        self.chars_removed: Counter = Counter()

    def apply(self, doc: Document) -> str | None:
        cleaner = self.cleaners.get(doc.lang)
        if cleaner is None:
            return None
        text, removed = cleaner.clean(doc.text)
        if not text.strip():
            return "clean_lines.empty"
        if not removed:
            return None
        self.docs_changed += 1
        for reason, (lines, chars) in removed.items():
            self.lines_removed[reason] += lines
            self.changes[reason] += 1
            self.chars_removed[reason] += chars
        doc.text = text
        return None

    def extras(self) -> dict:
        return {"docs_changed": self.docs_changed, "lines_removed": dict(sorted(self.lines_removed.items())),
                "changes": dict(sorted(self.changes.items())),
                "chars_removed": dict(sorted(self.chars_removed.items()))}


class Filter(Step):
    name = "filter"

    def __init__(self, cfg: PipelineConfig):
        super().__init__()
        self.rule_sets = build_rule_sets(cfg.rules)

    def apply(self, doc: Document) -> str | None:
        rule_set = self.rule_sets[rule_family(doc.lang, doc.annotations.get("content_type"))]
        reason = rule_set(doc.text)
        return f"{doc.lang}:{reason}" if reason else None


class Quality(Step):
    """Score with the fastText model; keep by threshold (or score only: top_fraction and
    score_only modes decide after every unit is scored, see runner.apply_top_fraction)."""
    name = "quality"

    def __init__(self, cfg: PipelineConfig):
        super().__init__()
        self.cfg = cfg.quality
        self.model = load_model(self.cfg.model) if self.cfg.model else None
        self.scored = 0

    def apply(self, doc: Document) -> str | None:
        if self.model is None or doc.lang not in self.cfg.langs:
            return None
        doc.quality_score = label_probability(self.model, model_text(doc.text, self.cfg.max_chars))
        self.scored += 1
        if self.cfg.mode == "threshold" and doc.quality_score < self.cfg.threshold:
            return f"{doc.lang}:quality.threshold"
        return None

    def extras(self) -> dict:
        return {"docs_scored": self.scored, "mode": self.cfg.mode,
                "model_sha256": model_sha256(self.cfg.model) if self.cfg.model else None}


class Harmful(Step):
    """Word / domain lists (reason `harmful.list:<category>`, `harmful.url:<category>`; the terms
    found go into annotations.harmful_terms) and, with `harmful.model`, the fastText classifier
    (`harmful.model`; its P(harmful) goes into annotations.harmful_score)."""
    name = "harmful"

    def __init__(self, cfg: PipelineConfig):
        from .harmful import HARMFUL, HarmfulLists

        super().__init__()
        self.cfg = cfg.harmful
        self.lists = HarmfulLists(self.cfg)
        self.model = load_model(self.cfg.model, "harmful_train") if self.cfg.model else None
        self.label = HARMFUL
        self.scored = 0

    def apply(self, doc: Document) -> str | None:
        url = doc.annotations.get(self.cfg.url_field) if self.cfg.url_field else None
        reason, terms = self.lists(doc.text, url if isinstance(url, str) else None)
        if reason:
            doc.annotations["harmful_terms"] = terms
            return reason
        if self.model is None or doc.lang not in self.cfg.langs:
            return None
        score = label_probability(self.model, model_text(doc.text, self.cfg.max_chars), self.label)
        doc.annotations["harmful_score"] = round(score, 4)
        self.scored += 1
        return "harmful.model" if score >= self.cfg.threshold else None

    def extras(self) -> dict:
        return {"docs_scored": self.scored, "lists": sorted(set(self.cfg.word_lists) | set(self.cfg.url_lists)),
                "harmful_model_sha256": model_sha256(self.cfg.model) if self.cfg.model else None}


class Pii(Step):
    """Replaces personal data by typed placeholders (data_pipeline.pii); removes nothing. Reports
    the replacements per kind (`replaced`) and the documents changed; a changed document carries
    its own counts in annotations.pii_replaced."""
    name = "pii"

    def __init__(self, cfg: PipelineConfig):
        from .pii import PiiScrubber

        super().__init__()
        self.scrubber = PiiScrubber(cfg.pii.kinds, cfg.pii.keep_private_ip)
        self.docs_changed = 0
        self.replaced: Counter = Counter()

    def apply(self, doc: Document) -> str | None:
        text, counts = self.scrubber.scrub(doc.text)
        if counts:
            self.docs_changed += 1
            self.replaced.update(counts)
            doc.annotations["pii_replaced"] = dict(sorted(counts.items()))
            doc.text = text
        return None

    def extras(self) -> dict:
        return {"docs_changed": self.docs_changed, "replaced": dict(sorted(self.replaced.items()))}


class Decontaminate(Step):
    """Documents sharing an n-gram with an evaluation set: removed as `decontaminate:<benchmark>`
    (the one with the most shared n-grams) or, with `action: mark`, kept; either way
    annotations.contamination = {benchmark: shared n-grams}. `hits` counts documents per benchmark."""
    name = "decontaminate"

    def __init__(self, cfg: PipelineConfig):
        from .decontaminate import Decontaminator

        super().__init__()
        self.action = cfg.decontaminate.action
        self.matcher = Decontaminator(cfg.decontaminate)
        self.hits: Counter = Counter()

    def apply(self, doc: Document) -> str | None:
        hits = self.matcher.hits(doc.text)
        if not hits:
            return None
        self.hits.update(hits.keys())
        doc.annotations["contamination"] = hits   # in excluded/ too, so a removal can be audited
        if self.action == "mark":
            return None
        return "decontaminate:" + min(hits, key=lambda name: (-hits[name], name))

    def extras(self) -> dict:
        return {"hits": dict(sorted(self.hits.items())), "action": self.action, "eval_sets": self.matcher.describe()}


STEP_TYPES = {cls.name: cls for cls in (Normalize, Annotate, CleanLines, Filter, Harmful, Pii, Decontaminate, Quality)}


def build_steps(names: list[str], cfg: PipelineConfig) -> list[Step]:
    return [STEP_TYPES[name](cfg) for name in names]
