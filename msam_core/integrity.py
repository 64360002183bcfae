"""Are a run's records whole?  Steps 1..N exactly once, evaluations in order, nothing skipped.

A run directory's ``.jsonl`` files are appended one line per record, so what can go wrong is
limited and recognisable: a line cut by a kill or a full disk, a line repeated, a block of
lines lost (a power loss before the data reached the disk, a hand edit, two processes
writing at once).  :func:`check_records` reads both files and returns the longest **whole
prefix** (every step from 1 on, exactly once; evaluations in epoch order, each (epoch, split)
once, no expected evaluation missing), the repairs it made (a repeated identical record is
dropped), and each problem it could not repair, naming file and line.

:func:`msam_core.record.load_run` reports those problems; a resume continues from the newest
checkpoint the whole prefix reaches (:mod:`msam_core.rundir`) and rewrites the files to
exactly that prefix, so the steps after it are redone, bit for bit, rather than lost.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msam_core.layout import EPOCHS_FILE, ITERATIONS_FILE, SPLITS

#: keys whose values differ between two runs of the same step (wall-clock timings)
_TIMING_PREFIX = "time/"


#: record keys with one fixed type (docs/design.md, "The run directory"); any other key is a
#: number or null
_INT_KEYS = ("step", "epoch")
_STR_KEYS = ("split", "dominant")
#: prefixes of the keys figures plot: their values must be numbers (or null: not finite)
_NUMBER_PREFIXES = ("loss", "lr", "acc", "phi/", "weight/", "sharpness", "balance", "hessian/")


def record_problem(record: Any) -> str | None:
    """What is wrong with one parsed ``.jsonl`` line, or None: a record is a JSON object,
    ``step`` / ``epoch`` are integers, ``split`` / ``dominant`` strings, and the measured
    values figures plot (loss, lr, acc, phi/<m>, weight/<m>, sharpness, ...) numbers or null."""
    if not isinstance(record, dict):
        return f"expected a JSON object {{...}}, found a {type(record).__name__}"
    for key, value in record.items():
        if key in _INT_KEYS:
            ok = isinstance(value, int) and not isinstance(value, bool)
            want = "an integer"
        elif key in _STR_KEYS:
            ok, want = isinstance(value, str), "a string"
        elif key.startswith(_NUMBER_PREFIXES):
            ok = value is None or (isinstance(value, int | float) and not isinstance(value, bool))
            want = "a number or null"
        else:
            continue
        if not ok:
            return f"{key!r} must be {want}, found {value!r}"
    return None


@dataclass
class Line:
    """One line of a ``.jsonl`` file: its number, its text and the record it holds (None when
    it is not valid JSON)."""

    number: int
    text: str
    record: dict[str, Any] | None


def read_lines(path: Path, advice: str = "fix or remove that line, then resume") -> list[Line]:
    """Every non-blank line of ``path`` (``[]`` when it does not exist).

    A line that is valid JSON but not a record msam writes (:func:`record_problem`) is a
    ValueError naming file and line, ending with ``advice``: a hand edit, never something to
    repair silently.
    """
    if not path.exists():
        return []
    lines = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                record = None
            if record is not None:
                problem = record_problem(record)
                if problem:
                    raise ValueError(
                        f"{path}, line {number}: {problem}; this file is not a record msam "
                        f"wrote (or was edited by hand): {advice}"
                    )
            lines.append(Line(number, text, record))
    return lines


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Two records of one step are the same record when they agree on everything measured
    (wall-clock timings aside)."""
    keys = {k for k in (*a, *b) if not k.startswith(_TIMING_PREFIX)}
    return all(a.get(k) == b.get(k) for k in keys)


@dataclass
class RecordsCheck:
    """The whole prefix of a run's records and what is wrong after it.

    ``iterations`` / ``epochs``: the lines of the whole prefix (repeated identical records
    left out).  ``problems``: what could not be repaired, each naming file and line (empty
    for a whole run).  ``repaired``: what was left out because it repeats a record exactly.
    ``cut``: a last line cut mid-write (a killed run; nothing is missing before it).
    """

    run_dir: Path
    iterations: list[Line] = field(default_factory=list)
    epochs: list[Line] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    cut: list[str] = field(default_factory=list)
    #: the last epoch whose evaluation records the prefix holds in full (-1: none)
    evaluated_through: int = -1
    #: the prefix may hold evaluations of every epoch up to here (inf when the file is whole)
    epochs_whole_through: float = math.inf

    @property
    def steps(self) -> int:
        """Steps 1..steps are in the prefix, each once."""
        return len(self.iterations)

    def covers(self, step: int, epoch: int, evaluated: Callable[[int], bool]) -> str | None:
        """None when the prefix holds steps 1..``step`` and every evaluation up to ``epoch``
        for which ``evaluated(e)`` is true; else what is missing."""
        if step > self.steps:
            return f"steps {self.steps + 1}..{step} are not in {ITERATIONS_FILE}"
        if epoch > self.epochs_whole_through:
            return f"evaluations after epoch {int(self.epochs_whole_through)} are not whole"
        done = self._evaluated_epochs()
        missing = [e for e in range(epoch + 1) if evaluated(e) and e not in done]
        if missing:
            return f"the evaluation of epoch {missing[0]} is not in {EPOCHS_FILE}"
        return None

    def _evaluated_epochs(self) -> set[int]:
        splits: dict[int, set[str]] = {}
        for line in self.epochs:
            splits.setdefault(line.record["epoch"], set()).add(line.record.get("split"))
        return {e for e, s in splits.items() if set(SPLITS) <= s}


def check_records(
    run_dir: str | os.PathLike, eval_every: int | None = None, *, first_step: int | None = 1
) -> RecordsCheck:
    """Check ``RUN/iterations.jsonl`` and ``RUN/epochs.jsonl`` (see the module docstring).

    ``eval_every`` (the run's config), when given, also makes a missing evaluation of an
    epoch divisible by it (and of epoch 0) a problem.  ``first_step``: the step the records
    must start at (1: the training loop's); None accepts the first one found (records
    written by a loop of one's own, which may count from 0).
    """
    check = RecordsCheck(Path(run_dir))
    _check_iterations(check, read_lines(check.run_dir / ITERATIONS_FILE), first_step)
    _check_epochs(check, read_lines(check.run_dir / EPOCHS_FILE), eval_every)
    return check


def _later(lines: list[Line], index: int) -> str:
    rest = len(lines) - index - 1
    return f" ({rest} later line{'s' * (rest != 1)} not used)" if rest else ""


def _check_iterations(check: RecordsCheck, lines: list[Line], first_step: int | None) -> None:
    name = ITERATIONS_FILE
    by_step: dict[int, Line] = {}
    last_epoch = -1
    start = first_step
    for index, line in enumerate(lines):
        where = f"{name} line {line.number}"
        record = line.record
        if record is None or not line.text.endswith("\n"):
            if index == len(lines) - 1:
                check.cut.append(f"{where}: cut mid-write (a killed run), not used")
                return
            check.problems.append(f"{where}: unreadable (cut or corrupt){_later(lines, index)}")
            return
        step, epoch = record.get("step"), record.get("epoch", last_epoch)
        if not isinstance(step, int) or not isinstance(epoch, int):
            continue  # not a step record of the loop (hand-written): nothing to check
        if start is None:
            start = step
        expected = start + check.steps
        if step < expected:
            first = by_step.get(step)
            if first is not None and _same(first.record, record):
                check.repaired.append(f"{where}: step {step} repeats line {first.number}; left out")
                continue
            check.problems.append(
                f"{where}: step {step} again, with other values than line "
                f"{first.number} (two writers?){_later(lines, index)}"
                if first is not None
                else f"{where}: step {step} before step {expected}{_later(lines, index)}"
            )
            return
        if step > expected:
            gap = f"step {expected}" if step == expected + 1 else f"steps {expected}..{step - 1}"
            check.problems.append(f"{where}: {gap} missing before it{_later(lines, index)}")
            return
        if epoch < last_epoch:
            check.problems.append(
                f"{where}: epoch {epoch} after epoch {last_epoch}{_later(lines, index)}"
            )
            return
        last_epoch = epoch
        by_step[step] = line
        check.iterations.append(line)


def _check_epochs(check: RecordsCheck, lines: list[Line], eval_every: int | None) -> None:
    name = EPOCHS_FILE
    seen: dict[tuple[int, str], Line] = {}
    current, splits = -1, set()

    def expected_between(start: int, stop: int) -> list[int]:
        if not eval_every:
            return [0] if start <= 0 < stop else []
        return [e for e in range(max(start, 0), stop) if e % eval_every == 0]

    def stop_at(index: int, problem: str, last_whole: int) -> None:
        check.problems.append(f"{name} line {lines[index].number}: {problem}{_later(lines, index)}")
        check.epochs_whole_through = last_whole

    for index, line in enumerate(lines):
        record = line.record
        whole = current if set(SPLITS) <= splits else current - 1
        if record is None or not line.text.endswith("\n"):
            if index == len(lines) - 1:
                check.cut.append(f"{name} line {line.number}: cut mid-write (a killed run)")
                break
            return stop_at(index, "unreadable (cut or corrupt)", whole)
        epoch, split = record.get("epoch"), record.get("split")
        if not isinstance(epoch, int) or not isinstance(split, str):
            continue  # not an evaluation record of the loop: nothing to check
        first = seen.get((epoch, split))
        if first is not None:
            if _same(first.record, record):
                check.repaired.append(
                    f"{name} line {line.number}: epoch {epoch} {split} repeats line "
                    f"{first.number}; left out"
                )
                continue
            return stop_at(
                index, f"epoch {epoch} {split} again, with other values (two writers?)", epoch - 1
            )
        if epoch < current:
            return stop_at(index, f"epoch {epoch} after epoch {current}", whole)
        if epoch > current:
            if current >= 0 and not set(SPLITS) <= splits:
                return stop_at(
                    index,
                    f"epoch {epoch} begins before epoch {current}'s evaluation is complete "
                    f"(has {sorted(splits)})",
                    current - 1,
                )
            missing = expected_between(current + 1, epoch)
            if missing:
                return stop_at(
                    index,
                    f"the evaluation of epoch {missing[0]} is missing before epoch {epoch}",
                    missing[0] - 1,
                )
            current, splits = epoch, set()
        splits.add(split)
        seen[(epoch, split)] = line
        check.epochs.append(line)
    check.evaluated_through = current if set(SPLITS) <= splits else current - 1


def records_report(check: RecordsCheck) -> list[str]:
    """One line per problem and repair, for a warning or an error message."""
    return [*check.problems, *check.repaired]
