"""`tuneforge data validate`: every check of OpenAI's cookbook chat data-prep notebook, and more.

Streaming: one pass over the file, holding only per-example token counts (a few bytes each) and
8-byte hashes for duplicate detection, so 100k-example files validate in bounded memory.

Error names (counted in `format_errors`): the cookbook's `data_type`, `missing_messages_list`,
`message_missing_key`, `message_unrecognized_key`, `unrecognized_role`, `missing_content`,
`example_missing_assistant_message`; ours `invalid_json`, `encoding`, `invalid_weight`,
`duplicate_example`, `invalid_tool_call`, `template_error`, ... File-level errors (`empty_file`,
`too_few_examples`) are counted in `file_errors`: they are not faults of any one example.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.data.chat_template import ChatTemplate, TemplateError
from tuneforge.data.formats import Issue, iter_parsed
from tuneforge.data.tokenize import encode

MIN_EXAMPLES = 10  # OpenAI refuses training files with fewer
MAX_LISTED = 1000  # detailed issues kept for the report; counts are always complete

# OpenAI's automatic epoch rule (cookbook "chat data prep"): aim for 3 epochs, but keep
# examples × epochs within [100, 25000], and epochs within [1, 25].
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25


def suggested_epochs(n_examples: int) -> int:
    if n_examples <= 0:
        return TARGET_EPOCHS
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def distribution(values: list[int] | array) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 2),
        "median": statistics.median(ordered),
        "p90": p90,
        "max": ordered[-1],
    }


@dataclass
class ValidationReport:
    path: str
    format: str | None
    model: str
    max_seq_len: int
    n_examples: int = 0  # records seen (valid or not)
    n_valid: int = 0
    format_errors: Counter = field(default_factory=Counter)
    file_errors: Counter = field(default_factory=Counter)
    warnings: Counter = field(default_factory=Counter)
    errors: list[Issue] = field(default_factory=list)
    warning_list: list[Issue] = field(default_factory=list)
    tokens: array = field(default_factory=lambda: array("l"))
    trained: array = field(default_factory=lambda: array("l"))
    messages: array = field(default_factory=lambda: array("l"))
    estimate: dict[str, Any] | None = None
    # The first encoded examples, kept for a training-time calibration on the user's own data.
    sample: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.format_errors and not self.file_errors

    @property
    def suggested_epochs(self) -> int:
        return suggested_epochs(self.n_valid)

    @property
    def billed_tokens_per_epoch(self) -> int:
        return sum(min(n, self.max_seq_len) for n in self.tokens)

    @property
    def billed_tokens(self) -> int:
        return self.billed_tokens_per_epoch * self.suggested_epochs

    def add_error(self, issue: Issue, *, file_level: bool = False) -> None:
        (self.file_errors if file_level else self.format_errors)[issue.name] += 1
        if len(self.errors) < MAX_LISTED:
            self.errors.append(issue)

    def add_warning(self, issue: Issue) -> None:
        self.warnings[issue.name] += 1
        if len(self.warning_list) < MAX_LISTED:
            self.warning_list.append(issue)

    def token_stats(self) -> dict[str, Any]:
        return {
            "tokens_per_example": distribution(self.tokens),
            "trained_tokens_per_example": distribution(self.trained),
            "messages_per_example": distribution(self.messages),
            "total_tokens": sum(self.tokens),
            "total_trained_tokens": sum(self.trained),
            "max_seq_len": self.max_seq_len,
        }

    def length_histogram(self, bins: int = 20) -> dict[str, list[int]]:
        """Examples per token-length bin: `edges` has one more entry than `counts`; the last
        bin includes its upper edge. The maximum length is marked by the caller."""
        if not self.tokens:
            return {"edges": [], "counts": []}
        top = max(self.tokens)
        width = max(1, -(-top // bins))  # ceil
        edges = [i * width for i in range(bins + 1)]
        counts = [0] * bins
        for n in self.tokens:
            counts[min(n // width, bins - 1)] += 1
        return {"edges": edges, "counts": counts}

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "model": self.model,
            "ok": self.ok,
            "n_examples": self.n_examples,
            "n_valid_examples": self.n_valid,
            "format_errors": dict(self.format_errors),
            "file_errors": dict(self.file_errors),
            "errors": [e.to_dict() for e in self.errors],
            "warnings": {
                name: self.warnings.get(name, 0)
                for name in ("missing_system", "missing_user", "over_max_length")
            }
            | dict(self.warnings),
            "warning_details": [w.to_dict() for w in self.warning_list],
            "token_stats": self.token_stats(),
            "length_histogram": self.length_histogram(),
            "suggested_epochs": self.suggested_epochs,
            "billed_tokens": self.billed_tokens,
            "training_time_estimate": self.estimate,
        }


def _digest(conversation_json: dict[str, Any]) -> bytes:
    canonical = json.dumps(conversation_json, sort_keys=True, ensure_ascii=False)
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=8).digest()


def validate_file(
    path: str | Path,
    tokenizer: Any,
    template: ChatTemplate,
    *,
    model_name: str,
    max_seq_len: int,
    fmt: str | None = None,
    mapping: dict[str, list[str]] | None = None,
    system: str | None = None,
    on_example: Callable[[], None] | None = None,
) -> ValidationReport:
    """Validate a data file against a model's tokenizer and chat template."""
    from tuneforge.data.formats import detect_format

    path = Path(path)
    if path.exists() and path.is_file() and path.stat().st_size == 0:
        report = ValidationReport(str(path), fmt, model_name, max_seq_len)
        report.add_error(
            Issue("empty_file", "the file is empty; add one example per line"), file_level=True
        )
        return report
    if mapping is None and fmt is None:
        fmt = detect_format(path)
    report = ValidationReport(str(path), "columns" if mapping else fmt, model_name, max_seq_len)
    seen: set[bytes] = set()
    for record, parsed in iter_parsed(path, fmt, mapping, system):
        report.n_examples += 1
        if on_example:
            on_example()
        for issue in parsed.errors:
            report.add_error(issue)
        for issue in parsed.warnings:
            report.add_warning(issue)
        conversation = parsed.conversation
        if conversation is None:
            continue
        digest = _digest(conversation.to_openai())
        if digest in seen:
            report.add_error(
                Issue(
                    "duplicate_example",
                    "this example repeats an earlier one; remove it",
                    line=record.line,
                )
            )
            continue
        seen.add(digest)
        try:
            encoded = encode(conversation, tokenizer, template, max_seq_len)
        except TemplateError as exc:
            report.add_error(Issue("template_error", str(exc), line=record.line))
            continue
        report.n_valid += 1
        line = record.line
        if not conversation.has_system:
            report.add_warning(Issue("missing_system", "no system message", line=line))
        if not conversation.has_user:
            report.add_warning(Issue("missing_user", "no user message", line=line))
        if encoded.full_length > max_seq_len:
            report.add_warning(
                Issue(
                    "over_max_length",
                    f"{encoded.full_length} tokens, over the maximum of {max_seq_len}; "
                    "the end will be cut off in training",
                    line=line,
                )
            )
            if encoded.full_trained > 0 and encoded.n_trained == 0:
                report.add_warning(
                    Issue(
                        "trained_tokens_truncated",
                        "truncation cuts away every trained token, so this example teaches "
                        "nothing; shorten the prompt or raise --max-seq-len",
                        line=line,
                    )
                )
        if encoded.full_trained == 0:
            report.add_warning(
                Issue("no_trained_tokens", "every assistant message has weight 0", line=line)
            )
        if len(report.sample) < 16:
            report.sample.append(encoded)
        report.tokens.append(encoded.full_length)
        report.trained.append(encoded.n_trained)
        report.messages.append(len(conversation.messages))
    if report.n_examples == 0:
        report.add_error(
            Issue("empty_file", "the file holds no examples; add one example per line"),
            file_level=True,
        )
    elif report.n_valid < MIN_EXAMPLES:
        report.add_error(
            Issue(
                "too_few_examples",
                f"{report.n_valid} valid example(s); fine-tuning needs at least {MIN_EXAMPLES} "
                "(50-100 well-crafted ones usually give clear gains)",
            ),
            file_level=True,
        )
    return report
