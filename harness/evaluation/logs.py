"""Parse Parameter Golf training logs into numbers golf-eval can check.

The challenge scripts print free-form lines; we recognise the shapes the records use:

    step:N/M train_loss:… train_time:…ms step_avg:…ms      (old style)
    N/M train_loss: … train_time: 9.8m tok/s: …            (new style, minutes)
    stopping_early: wallclock_cap train_time:…ms step:N/M
    <label> val_loss:… val_bpb:… [stride:…] [eval_time:…ms | time:…ms | elapsed=…s]
    Serialized model[ label]: N bytes / Code size[ (label)]: N bytes / Total submission size[ label]: N bytes
    seed:N / seed: N

Anything else is tolerated and counted as unknown. Logs often start with the script's own
source (dumped by `log0(code)`); its lines never match because their values are not numbers.

Timing model: training ends at the stopping_early line (or the last step line). Every result
line after that closes an eval *phase*; the lines between two result lines belong to the phase
the second one closes. A phase whose result line prints no time, or that never printed a result
(the log ends inside it), is "unmeasured": we say so and, where we can, estimate it.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.challenge.results import NUM, VAL_BPB, VAL_LOSS

STEP_OLD = re.compile(r"^step:(\d+)/(\d+)\b(.*)$")
STEP_NEW = re.compile(r"^(\d+)/(\d+)\s+(?:train_loss|val_loss)\b(.*)$")
TRAIN_TIME_MS = re.compile(r"\btrain_time:\s*(" + NUM + r")ms\b")
TRAIN_TIME_MIN = re.compile(r"\btrain_time:\s*(" + NUM + r")m\b")
STOPPING = re.compile(
    r"^stopping_early:.*?train_time:\s*(" + NUM + r")ms(?:.*?step:\s*(\d+)/(\d+))?"
)
# Times printed on result lines, in the units the records use.
TIME_PATTERNS = [
    (re.compile(r"\beval_time:\s*(" + NUM + r")ms\b"), "eval_time", 1e-3),
    (re.compile(r"\beval_time:\s*(" + NUM + r")s\b"), "eval_time", 1.0),
    (re.compile(r"(?<![\w_])time:\s*(" + NUM + r")ms\b"), "time", 1e-3),
    (re.compile(r"\belapsed[:=]\s*(" + NUM + r")s\b"), "elapsed", 1.0),
    (re.compile(r"\belapsed[:=]\s*(" + NUM + r")ms\b"), "elapsed", 1e-3),
]
KEY_VALUE_TOKEN = re.compile(r"^[\w\-]+[:=]" + NUM + r"\w*$")
SEED = re.compile(r"^\s*seed\s*[:=]\s*(\d+)\s*$")
SEED_IN_NAME = re.compile(r"seed[_\-]?(\d+)|_log_(\d+)\.\w+$", re.I)
SEED_IN_DUMP = re.compile(r"(?:^|\s)seed=(\d+)(?=\s|$)")  # "… run_id=x seed=1337 …" hyperparameter dumps
SERIALIZED = re.compile(r"^Serialized model(?:\s+([^:]+?))?:\s*(\d+)\s*bytes\b")
CODE_SIZE = re.compile(r"^Code size(?:\s*\(([^)]*)\))?:\s*(\d+)\s*bytes\b")
TOTAL_SIZE = re.compile(r"^Total submission size(?:\s+([^:]+?))?:\s*(\d+)\s*bytes\b")
# "INT7+zlib model: 15370972 bytes | Total submission: 15441941 bytes" (model and total on one line)
TOTAL_INLINE = re.compile(r"^(?:(\S.*?)\s+model:\s*\d+\s*bytes\s*\|\s*)?Total submission:\s*(\d+)\s*bytes\b")
BUDGET_SIZE = re.compile(r"^budget:(\d+)/\d+")  # "budget:15995705/16000000 (…) FITS"
ARTIFACT_CODE = re.compile(r"^artifact:.*\bcode:(\d+)")  # "artifact:15.92MB … code:70853"
SCRIPT_TOTAL_EVAL = re.compile(r"^total_eval_time:\s*(" + NUM + r")s\b")
# Training-data passes after the training loop (rules.md: GPTQ Hessians count as training time).
POST_LOOP_TRAIN = [
    re.compile(r"^GPTQ:collected \d+ Hessians in (" + NUM + r")s\b", re.I),
    re.compile(r"^gptq:calibrated \d+ layers in (" + NUM + r")s\b", re.I),
]
# GPTQ calibrated on text the model generates itself touches no training data: not train time.
SELF_GEN_CALIB = re.compile(r"(autoregressive|self-gen|selfgen=1|ar_selfgen=1|AR self-gen)", re.I)
POST_GPTQ_TOTAL = re.compile(r"^wallclock:post_gptq total_elapsed:\s*(" + NUM + r")s\b")
# A progress line inside a phase: "name [ 12.3%] …" (sliding_eval, lora_ttt_batch, …).
PROGRESS = re.compile(r"^\s*([A-Za-z_][\w\-]*)\s*\[\s*(" + NUM + r")%\]")
# Lines that show some eval pass is running (used to notice a phase that never printed a result).
ACTIVITY = re.compile(
    r"(start|begin|epoch|\[\s*[\d.]+%\]|running_(?:bpb|loss)|progress|chunk|c\d+/\d+|b\d+/\d+)", re.I
)
# Lines after a result that are summaries of it, not a new pass.
SUMMARY_LINE = re.compile(r"^(ttt_improvement|total_eval_time|peak memory|ttt_gain|delta)", re.I)
NOISE = re.compile(r"^(W\d{4} |\[W|\*+$|nohup:|=+$|-+$|Running (Python|PyTorch))")
# Wall-clock timestamps at the start of a line (ISO date-time or [HH:MM:SS]).
TIMESTAMP = re.compile(
    r"^\[?(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?|\d{2}:\d{2}:\d{2}(?:\.\d+)?|1\d{9}\.\d+)\]?(?:\s|$)"
)

LOG_SUFFIXES = (".log", ".txt")
NOT_LOGS = {"requirements.txt", "readme.txt", "license.txt"}


@dataclass
class ResultLine:
    label: str  # the text before val_loss with key:value tokens dropped, e.g. "ttt_final"
    val_loss: float  # nats per token, as printed
    val_bpb: float
    time_s: float | None  # the time printed on the line, if any
    time_key: str | None  # which key carried it: eval_time / time / elapsed
    line: int  # 1-based
    text: str
    after_training: bool

    @property
    def exact(self) -> bool:
        return self.label.endswith("_exact")


@dataclass
class EvalPhase:
    """One eval pass that ran after training."""

    label: str  # the closing result line's label, or the first marker line of an unclosed pass
    status: str  # "logged" (time printed), "unmeasured" (ran, no time printed)
    time_s: float | None  # logged time
    first_line: int
    last_line: int
    result: ResultLine | None = None  # None: the log ends inside the pass
    aliases: list[str] = field(default_factory=list)  # other result lines reporting the same pass
    markers: list[str] = field(default_factory=list)  # a few lines showing the pass ran
    estimate_s: float | None = None  # for unmeasured passes, when one can be made
    estimate_kind: str = ""  # "timestamps" or "lower bound from progress"
    estimate_basis: str = ""
    wall_s: float | None = None  # from line timestamps, when the log has them


@dataclass
class SizeLine:
    kind: str  # "model", "code", "total"
    label: str  # e.g. "int8+zlib", "compressed", ""
    value: int
    line: int


@dataclass
class ParsedLog:
    path: str
    seed: int | None = None
    seed_source: str = ""  # "log line N" or "file name"
    last_step: int | None = None
    total_steps: int | None = None
    train_time_s: float | None = None
    train_time_source: str = ""
    stopped_early: bool = False
    post_loop_train_s: float = 0.0  # GPTQ calibration etc. after the loop, from the log
    post_loop_train_lines: list[str] = field(default_factory=list)
    post_gptq_total_s: float | None = None  # the script's own "train + GPTQ" wall-clock, if printed
    self_generated_calibration: bool = False  # GPTQ calibrated on model-generated text
    timestamps: bool = False  # lines carry wall-clock timestamps
    results: list[ResultLine] = field(default_factory=list)
    phases: list[EvalPhase] = field(default_factory=list)
    sizes: list[SizeLine] = field(default_factory=list)
    script_total_eval_s: float | None = None  # the script's own total_eval_time line
    lines_total: int = 0
    lines_unknown: int = 0
    embedded_code: bool = False
    missing: list[str] = field(default_factory=list)  # what we looked for and did not find

    # ---- derived numbers -------------------------------------------------------------------

    @property
    def is_train_log(self) -> bool:
        return self.last_step is not None or bool(self.results)

    @property
    def artifact(self) -> SizeLine | None:
        """The artifact size: the last labelled 'Total submission size' line (the compressed
        one; the unlabelled one is usually the raw fp checkpoint), else the last total, else
        compressed model + code."""
        totals = [s for s in self.sizes if s.kind == "total"]
        labelled = [s for s in totals if s.label]
        if labelled:
            return labelled[-1]
        if totals:
            return totals[-1]
        return None

    @property
    def code_bytes(self) -> int | None:
        code = [s for s in self.sizes if s.kind == "code"]
        compressed = [s for s in code if "compress" in s.label and "un" not in s.label]
        pick = compressed or code
        return pick[-1].value if pick else None

    @property
    def train_total_s(self) -> float | None:
        if self.self_generated_calibration:
            return self.train_time_s  # GPTQ on self-generated text touches no training data
        if self.post_gptq_total_s is not None:
            return self.post_gptq_total_s
        if self.train_time_s is None:
            return None
        return self.train_time_s + self.post_loop_train_s

    @property
    def eval_logged_s(self) -> float:
        return sum(p.time_s for p in self.phases if p.time_s is not None)

    @property
    def unmeasured_phases(self) -> list[EvalPhase]:
        return [p for p in self.phases if p.status == "unmeasured"]

    def final_result(self) -> ResultLine | None:
        after = [r for r in self.results if r.after_training]
        return after[-1] if after else None

    def result_by_label(self, label: str) -> ResultLine | None:
        hits = [r for r in self.results if r.label == label and r.after_training]
        return hits[-1] if hits else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["artifact_bytes"] = self.artifact.value if self.artifact else None
        d["code_bytes"] = self.code_bytes
        d["train_total_s"] = self.train_total_s
        d["eval_logged_s"] = self.eval_logged_s
        return d


# ---- parsing --------------------------------------------------------------------------------


def _label_of(prefix: str) -> str:
    tokens = [t for t in prefix.split() if not KEY_VALUE_TOKEN.match(t)]
    return " ".join(tokens).strip(" :,")


def _time_of(text: str) -> tuple[float | None, str | None]:
    for pattern, key, scale in TIME_PATTERNS:
        m = pattern.search(text)
        if m:
            return float(m.group(1)) * scale, key
    return None, None


def _timestamp(text: str) -> datetime | None:
    m = TIMESTAMP.match(text)
    if not m:
        return None
    raw = m.group(1).replace("T", " ")
    if re.fullmatch(r"1\d{9}\.\d+", raw):  # unix epoch seconds
        return datetime.fromtimestamp(float(raw))
    for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%H:%M:%S.%f", "%H:%M:%S"):
        try:
            return datetime.strptime(raw, fmt)
        except ValueError:
            continue
    return None


def parse_log_text(text: str, path: str = "<log>") -> ParsedLog:
    log = ParsedLog(path=path)
    raw_lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln) for ln in raw_lines]
    log.lines_total = len(lines)
    train_end = -1  # index of the line that ends training
    code_markers = 0
    for i, line in enumerate(lines):
        s = line.strip()
        if not s:
            continue
        # Timestamps (if any) are stripped before matching so both shapes parse.
        body = TIMESTAMP.sub("", s, count=1).strip() if TIMESTAMP.match(s) else s
        if body is not s:
            log.timestamps = True
        if not body:
            continue
        if SELF_GEN_CALIB.search(body) and "gptq" in body.lower():
            log.self_generated_calibration = True
        if body.startswith(("def ", "class ", "import ", "from ")) or "log0(" in body:
            code_markers += 1
        if m := STOPPING.match(body):
            log.stopped_early = True
            log.train_time_s = float(m.group(1)) / 1000.0
            log.train_time_source = f"stopping_early line {i + 1}"
            if m.group(2):
                log.last_step, log.total_steps = int(m.group(2)), int(m.group(3))
            train_end = i
            continue
        step = STEP_OLD.match(body) or STEP_NEW.match(body)
        if step:
            log.last_step, log.total_steps = int(step.group(1)), int(step.group(2))
            if not log.stopped_early:
                if tm := TRAIN_TIME_MS.search(body):
                    log.train_time_s = float(tm.group(1)) / 1000.0
                    log.train_time_source = f"step line {i + 1}"
                elif tm := TRAIN_TIME_MIN.search(body):
                    log.train_time_s = float(tm.group(1)) * 60.0
                    log.train_time_source = f"step line {i + 1} (minutes, 0.1 min resolution)"
                train_end = i
            continue
        loss, bpb = VAL_LOSS.search(body), VAL_BPB.search(body)
        if loss and bpb:
            time_s, key = _time_of(body)
            label = _label_of(body[: min(loss.start(), bpb.start())]) or "(unlabelled)"
            log.results.append(
                ResultLine(label, float(loss.group(1)), float(bpb.group(1)), time_s, key, i + 1, body,
                           after_training=False)
            )
            continue
        if m := SEED.match(body):
            if log.seed is None:
                log.seed, log.seed_source = int(m.group(1)), f"log line {i + 1}"
            continue
        if m := BUDGET_SIZE.match(body):
            log.sizes.append(SizeLine("total", "budget line", int(m.group(1)), i + 1))
            continue
        if m := ARTIFACT_CODE.match(body):
            log.sizes.append(SizeLine("code", "artifact line", int(m.group(1)), i + 1))
            continue
        if log.seed is None and "(" not in body and (m := SEED_IN_DUMP.search(body)):
            log.seed, log.seed_source = int(m.group(1)), f"log line {i + 1}"
            continue
        if m := (TOTAL_SIZE.match(body) or TOTAL_INLINE.match(body)):
            log.sizes.append(SizeLine("total", (m.group(1) or "").strip(), int(m.group(2)), i + 1))
            continue
        if m := SERIALIZED.match(body):
            log.sizes.append(SizeLine("model", (m.group(1) or "").strip(), int(m.group(2)), i + 1))
            continue
        if m := CODE_SIZE.match(body):
            log.sizes.append(SizeLine("code", (m.group(1) or "").strip(), int(m.group(2)), i + 1))
            continue
        if m := SCRIPT_TOTAL_EVAL.match(body):
            log.script_total_eval_s = float(m.group(1))
            continue
        if m := POST_GPTQ_TOTAL.match(body):
            log.post_gptq_total_s = float(m.group(1))
            continue
        matched_post = False
        for pattern in POST_LOOP_TRAIN:
            if m := pattern.match(body):
                log.post_loop_train_s += float(m.group(1))
                log.post_loop_train_lines.append(f"line {i + 1}: {s}")
                matched_post = True
                break
        if matched_post:
            continue
        log.lines_unknown += 1
    log.embedded_code = code_markers >= 3
    for r in log.results:
        r.after_training = (r.line - 1) > train_end
    if log.seed is None and (m := SEED_IN_NAME.search(Path(path).name)):
        log.seed, log.seed_source = int(m.group(1) or m.group(2)), "file name"
    bodies = [TIMESTAMP.sub("", ln.strip(), count=1) for ln in lines]
    log.phases = _phases(bodies, log, train_end)
    if log.timestamps:
        for p in log.phases:
            _timestamp_time(p, lines)
    _note_missing(log)
    return log


def _phases(lines: list[str], log: ParsedLog, train_end: int) -> list[EvalPhase]:
    """Group the post-training result lines into eval passes (see module docstring)."""
    phases: list[EvalPhase] = []
    start = train_end + 1
    after = [r for r in log.results if r.after_training]
    for r in after:
        prev = phases[-1] if phases else None
        if prev is not None and prev.result is not None and _same_pass(prev, r, lines):
            prev.aliases.append(f"{r.label} (line {r.line})")
            if prev.time_s is None and r.time_s is not None:
                prev.time_s, prev.status = r.time_s, "logged"
            prev.last_line = r.line
            start = r.line
            continue
        markers = _activity(lines, start, r.line - 1)
        phase = EvalPhase(
            label=r.label,
            status="logged" if r.time_s is not None else "unmeasured",
            time_s=r.time_s,
            first_line=start + 1,
            last_line=r.line,
            result=r,
            markers=markers[:4],
        )
        phases.append(phase)
        start = r.line
    # A pass that started after the last result and never printed one (log ends inside it).
    tail_markers = _activity(lines, start, len(lines))
    if tail_markers:
        phases.append(
            EvalPhase(
                label=tail_markers[0].split()[0] if tail_markers[0].split() else "(unnamed pass)",
                status="unmeasured",
                time_s=None,
                first_line=start + 1,
                last_line=len(lines),
                result=None,
                markers=tail_markers[:6],
            )
        )
    for p in phases:
        if p.status == "unmeasured":
            _estimate(p, phases, lines)
    return phases


def _timestamp_time(phase: EvalPhase, lines: list[str]) -> None:
    """With timestamped lines, every pass (timed or not) gets a wall-clock duration: from the
    line before it to its last line. For an unmeasured pass that is its estimate."""
    if phase.first_line < 2:
        return
    t0 = _timestamp(lines[phase.first_line - 2].strip())
    t1 = _timestamp(lines[phase.last_line - 1].strip())
    if t0 is None or t1 is None or t1 < t0:
        return
    phase.wall_s = (t1 - t0).total_seconds()
    if phase.status == "unmeasured":
        phase.estimate_s = phase.wall_s
        phase.estimate_kind = "timestamps"
        phase.estimate_basis = f"line timestamps, lines {phase.first_line - 1}-{phase.last_line}"


def _same_pass(prev: EvalPhase, r: ResultLine, lines: list[str]) -> bool:
    """An `_exact` twin or a second summary line of the same pass: same numbers, printed right
    after, and no time of its own that disagrees."""
    p = prev.result
    assert p is not None
    if abs(p.val_loss - r.val_loss) > 5e-4 or abs(p.val_bpb - r.val_bpb) > 5e-4:
        return False
    if _activity(lines, p.line, r.line - 1):
        return False  # another pass ran in between
    if p.time_s is not None and r.time_s is not None:
        # Twins print one duration, maybe in other units and precision (412.3s / 412345ms) and
        # timed from slightly different points (2%). Two short passes of an untrained model
        # can print the same loss (a toy run's roundtrip and sliding window, 0.2 s and 0.4 s):
        # their times tell them apart.
        slack = _time_precision(p.text) + _time_precision(r.text)
        return abs(p.time_s - r.time_s) <= max(0.05, slack, 0.02 * max(p.time_s, r.time_s))
    return True


def _time_precision(text: str) -> float:
    """Seconds of one unit in the last printed digit of the line's time (425ms: 0.001)."""
    for pattern, _, scale in TIME_PATTERNS:
        m = pattern.search(text)
        if m:
            digits = m.group(1).split(".")[1] if "." in m.group(1) else ""
            return scale * 10.0 ** -len(digits)
    return 0.0


def _activity(lines: list[str], start: int, end: int) -> list[str]:
    """Lines in lines[start:end] that show an eval pass running (not noise, not summaries)."""
    out = []
    for ln in lines[max(start, 0):end]:
        s = ln.strip()
        if not s or NOISE.match(s) or SUMMARY_LINE.match(s):
            continue
        if ACTIVITY.search(s) and not s.startswith(("def ", "for ", "if ", "#")) and "{" not in s:
            out.append(s)
    return out


def _estimate(phase: EvalPhase, phases: list[EvalPhase], lines: list[str]) -> None:
    # Progress lines ("sliding_eval [ 26.4%]") of a kind that a timed pass also printed:
    # this pass took at least that fraction of the timed one (a lower bound: other work in
    # the pass, e.g. training epochs, is not counted). Timestamped logs: see _timestamp_time.
    seg = lines[phase.first_line - 1: phase.last_line]
    progress: dict[str, float] = {}
    for ln in seg:
        if m := PROGRESS.match(ln):
            progress[m.group(1)] = max(progress.get(m.group(1), 0.0), float(m.group(2)))
    for name, pct in progress.items():
        for other in phases:
            if other is phase or other.time_s is None:
                continue
            seg_o = lines[other.first_line - 1: other.last_line]
            pcts = [float(m.group(2)) for ln in seg_o if (m := PROGRESS.match(ln)) and m.group(1) == name]
            if pcts and max(pcts) >= 90.0:
                phase.estimate_s = other.time_s * pct / 100.0
                phase.estimate_kind = "lower bound from progress"
                phase.estimate_basis = (
                    f"its '{name}' progress reached {pct:.1f}%; the timed pass '{other.label}' ran "
                    f"'{name}' to {max(pcts):.1f}% in {other.time_s:.1f} s; time for the pass's other "
                    "work is not known"
                )
                return


def _note_missing(log: ParsedLog) -> None:
    if log.last_step is None:
        log.missing.append("step lines")
    if log.train_time_s is None:
        log.missing.append("train time (no train_time on step lines, no stopping_early)")
    if log.seed is None:
        log.missing.append("seed")
    if not [r for r in log.results if r.after_training]:
        log.missing.append("final result line (val_loss/val_bpb after training)")
    if log.artifact is None:
        log.missing.append("artifact size (Total submission size … bytes)")
    if log.code_bytes is None:
        log.missing.append("code size (Code size: … bytes)")
    if log.phases and all(p.time_s is None for p in log.phases):
        log.missing.append("eval time (no result line prints eval_time/time)")


def parse_log(path: Path, root: Path | None = None) -> ParsedLog:
    text = path.read_text(encoding="utf-8", errors="replace")
    name = str(path.relative_to(root)) if root else str(path)
    return parse_log_text(text, name)


def find_logs(folder: Path) -> list[Path]:
    """Candidate log files: *.log / *.txt in the folder and one level down (e.g. logs/)."""
    out = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in LOG_SUFFIXES:
            continue
        rel = p.relative_to(folder)
        if len(rel.parts) > 2 or p.name.lower() in NOT_LOGS:
            continue
        out.append(p)
    return out


def parse_folder_logs(folder: Path) -> list[ParsedLog]:
    """Every train log in the folder (files with step lines or result lines)."""
    logs = []
    for p in find_logs(folder):
        parsed = parse_log(p, folder)
        if parsed.is_train_log:
            logs.append(parsed)
    return logs
