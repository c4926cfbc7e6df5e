"""The one place where submission code is executed.

Every run of a submission's code goes through `run()`: a subprocess in a fresh network
namespace (bubblewrap when present), with resource limits, a wall-clock timeout that kills
the whole sandbox, a scratch directory as the only writable place (plus a private /tmp),
an environment scrubbed of credentials, and capped output.

Isolation levels, best first (`SandboxResult.isolation` says which one ran):
- "bwrap":   bubblewrap. Read-only view of /, read-write scratch, private /tmp and /dev/shm,
             new network namespace (only a loopback interface, up), new PID namespace (the
             whole tree dies with the sandbox), new session (no terminal injection).
- "unshare": `unshare -Urn` (user + network namespace). Blocks the network but does NOT
             confine writes: the submission can write anywhere the invoking user can (a
             submission that knows it is audited could rewrite the harness or its trace).
             Used only when the caller passes allow_weak=True (CLI `--allow-weak-sandbox`).
- "none":    only with allow_weak=True and allow_network=True (`--unsafe-allow-network`);
             nothing is confined except rlimits, timeout and environment scrubbing.
Without bubblewrap and without allow_weak, `run()` raises `SandboxUnavailable` naming the
install command (the caller reports the submission as not auditable, exit 3). Every weaker
level adds a line to `SandboxResult.warnings`, which reports show in every format.

Process-count limit. RLIMIT_NPROC counts every process of the *user* and is not enforced at
all for root (the kernel exempts uid 0), so it is set (it helps for ordinary users) and
backed by a watchdog that counts the processes inside the sandbox every 50 ms and kills the
sandbox when there are more than `Limits.processes`.
"""
from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from harness.dynamic.run.paths import INNER_SCRATCH  # the fixed path inside the sandbox

GiB = 1 << 30
MiB = 1 << 20


class SandboxUnavailable(RuntimeError):
    """No isolation mechanism works here and the caller did not allow running unconfined."""


@dataclass
class Limits:
    """Resource limits for one sandboxed run. Defaults fit a toy-scale audit run of a real
    contest script (torch import needs ~0.6 GiB of address space; a 2-rank torchrun with gloo
    and glibc arenas stays well under 8 GiB per process)."""

    cpu_s: int = 3600  # RLIMIT_CPU per process (SIGXCPU then SIGKILL)
    address_space_bytes: int = 16 * GiB  # RLIMIT_AS per process; >= 2 GiB for torch
    file_size_bytes: int = 4 * GiB  # RLIMIT_FSIZE: largest file a process may write
    open_files: int = 4096  # RLIMIT_NOFILE
    processes: int = 256  # process count inside the sandbox (watchdog + RLIMIT_NPROC)
    stdout_cap_bytes: int = 8 * MiB  # output kept per stream: head + tail; over it, killed
    stderr_cap_bytes: int = 8 * MiB


@dataclass
class SandboxResult:
    returncode: int  # negative = killed by that signal (as subprocess reports it)
    stdout: str
    stderr: str
    wall_s: float
    killed_reason: str | None  # "timeout", "memory", "cpu-time", "output-cap",
    #                            "process-limit", "sandbox-violation", or None
    truncated: bool  # an output stream went over its cap (head and tail kept)
    isolation: str  # "bwrap" | "unshare" | "none"
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # isolation weaker than bwrap: say so loudly


# ---------------------------------------------------------------- environment
_SECRET_NAME = re.compile(
    # suffixes: FOO_TOKEN, FOO_SECRET, FOO_KEY, ... (never TRAIN_BATCH_TOKENS: anchored at the end)
    r"(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|_KEY|APIKEY|_KEY_ID)$"
    # well-known credential-bearing prefixes
    r"|^(GITHUB_|GH_|AWS_|GOOGLE_|GCLOUD_|GCP_|AZURE_|HF_|HUGGING|OPENAI_|ANTHROPIC_|WANDB_|"
    r"NPM_|PYPI_|TWINE_|DOCKER_|SSH_|GPG_|KUBE|ACTIONS_)",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def scrub_env(env: dict[str, str]) -> dict[str, str]:
    """Drop every variable whose name looks like a credential."""
    return {k: str(v) for k, v in env.items() if not is_secret_name(k)}


def base_env(scratch: Path) -> dict[str, str]:
    """The minimal environment a sandboxed process starts from: nothing inherited except
    PATH and locale. HOME points into scratch so caches land there."""
    home = scratch / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": "/tmp",
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "LC_ALL": os.environ.get("LC_ALL", "C.UTF-8"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "XDG_CACHE_HOME": str(home / ".cache"),
    }
    return env


# ---------------------------------------------------------------- isolation
_PROBE_CACHE: dict[str, tuple[bool, str]] = {}

INSTALL_HINT = ("install it: `sudo apt-get install bubblewrap` (Debian/Ubuntu; `dnf install bubblewrap` on "
                "Fedora); on Ubuntu 23.10+ where bwrap then fails with a permission error, see docs/sandbox.md "
                "(AppArmor restricts unprivileged user namespaces)")
WEAK_WARNING = ("weak sandbox (--allow-weak-sandbox): `unshare -Urn` blocks the network but the submission's "
                "writes were NOT confined to its scratch folder; it could have changed files outside it")
NONE_WARNING = ("no sandbox (--allow-weak-sandbox with --unsafe-allow-network): network and writes were NOT "
                "confined")


def _probe(name: str, argv: list[str]) -> tuple[bool, str]:
    """Can this isolation wrapper start a process here, and if not, what did it say? (cached
    per process)"""
    if name not in _PROBE_CACHE:
        try:
            r = subprocess.run(argv + ["/bin/true"], capture_output=True, timeout=20)
            why = r.stderr.decode("utf-8", "replace").strip().splitlines()
            _PROBE_CACHE[name] = (r.returncode == 0, why[-1][:200] if why else f"exit {r.returncode}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            _PROBE_CACHE[name] = (False, f"{type(exc).__name__}: {exc}")
    return _PROBE_CACHE[name]


def _bwrap_status() -> tuple[bool, str]:
    """(usable, why not). bwrap is looked up on PATH at every call: tests hide it that way."""
    bwrap = shutil.which("bwrap")
    if not bwrap:
        return False, "bubblewrap (bwrap) is not installed"
    ok, why = _probe("bwrap", [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                               "--unshare-net", "--unshare-pid", "--die-with-parent", "--"])
    return ok, "" if ok else f"bubblewrap is installed but cannot start a sandbox here ({why})"


def available_isolation() -> str | None:
    """The best mechanism that works here: 'bwrap', 'unshare', or None."""
    if _bwrap_status()[0]:
        return "bwrap"
    unshare = shutil.which("unshare")
    if unshare and _probe("unshare", [unshare, "-Urn", "--"])[0]:
        return "unshare"
    return None


def choose_isolation(*, allow_weak: bool = False, allow_network: bool = False) -> str:
    """The isolation a run gets: 'bwrap', else with allow_weak 'unshare' (or 'none' when that
    fails too, or when the network is allowed); raises SandboxUnavailable otherwise. Callers
    ask before any work so that a refusal is immediate."""
    ok, why = _bwrap_status()
    if ok:
        return "bwrap"
    if not allow_weak:
        raise SandboxUnavailable(
            f"{why}: without it the submission's writes cannot be confined to its scratch folder; "
            f"{INSTALL_HINT}; or rerun with --allow-weak-sandbox to run under `unshare -Urn` "
            "(network blocked, writes NOT confined; every report says so)")
    iso = available_isolation()
    if iso is None and not allow_network:
        raise SandboxUnavailable(
            f"{why}, and `unshare -Urn` fails too (no user namespaces): {INSTALL_HINT}; "
            "--unsafe-allow-network with --allow-weak-sandbox runs the submission unconfined")
    return "none" if allow_network or iso is None else iso



def scratch_alias() -> str | None:
    """The path the scratch folder has inside the sandbox when it differs from the real one
    (bubblewrap), else None (unshare or no isolation: the real path)."""
    return INNER_SCRATCH if available_isolation() == "bwrap" else None


def _bwrap_argv(scratch: Path, extra_ro_binds: Sequence[str | Path | tuple[str, str]], inner: str | None = None,
                hide: Sequence[str | Path] = ()) -> list[str]:
    """`extra_ro_binds`: host paths bound read-only at the same path, or (host, inside) pairs;
    `hide`: host folders covered by an empty tmpfs (their contents bound elsewhere, if at all)."""
    inside = inner or str(scratch)
    argv = [shutil.which("bwrap") or "bwrap",
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            "--proc", "/proc",
            "--tmpfs", "/tmp",  # private /tmp; scratch is bound after, so it may live in /tmp
            "--tmpfs", "/dev/shm"]
    for p in hide:
        argv += ["--tmpfs", str(p)]
    for p in extra_ro_binds:
        src, dst = p if isinstance(p, tuple) else (p, p)
        argv += ["--ro-bind", str(src), str(dst)]
    argv += ["--bind", str(scratch), inside]
    argv += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
             "--die-with-parent", "--new-session", "--chdir", inside, "--"]
    return argv


def _set_limits(limits: Limits) -> None:
    """Runs in the child between fork and exec (preexec_fn)."""
    def cap(which: int, value: int) -> None:
        soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value if hard == resource.RLIM_INFINITY else hard))

    cap(resource.RLIMIT_CPU, limits.cpu_s)
    cap(resource.RLIMIT_AS, limits.address_space_bytes)
    cap(resource.RLIMIT_FSIZE, limits.file_size_bytes)
    cap(resource.RLIMIT_NOFILE, limits.open_files)
    cap(resource.RLIMIT_CORE, 0)
    # RLIMIT_NPROC is per user: allow the user's current processes plus the sandbox's share.
    try:
        mine = sum(1 for d in os.listdir("/proc") if d.isdigit() and _uid_of(d) == os.getuid())
    except OSError:
        mine = 0
    cap(resource.RLIMIT_NPROC, mine + limits.processes)


def _uid_of(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


# ---------------------------------------------------------------- output capture
class _CappedReader(threading.Thread):
    """Reads one pipe; keeps the first and last cap/2 bytes. Calls on_over() once when the
    stream goes over the cap (the caller kills the sandbox; reading stops soon after)."""

    def __init__(self, pipe, cap: int, on_over) -> None:
        super().__init__(daemon=True)
        self.pipe, self.cap, self.on_over = pipe, cap, on_over
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.over = False

    def run(self) -> None:
        half = max(self.cap // 2, 1)
        while True:
            try:
                chunk = self.pipe.read1(1 << 16)
            except (OSError, ValueError):
                break
            if not chunk:
                break
            self.total += len(chunk)
            room = half - len(self.head)
            if room > 0:
                self.head += chunk[:room]
                chunk = chunk[room:]
            if chunk:
                self.tail += chunk
                if len(self.tail) > half:
                    del self.tail[: len(self.tail) - half]
            if self.total > self.cap and not self.over:
                self.over = True
                self.on_over()
                break  # stop reading; the sandbox is being killed

    def text(self) -> str:
        if not self.over and self.total <= self.cap:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", "replace")
        note = (f"\n[golf-audit: output truncated: {self.total:,}+ bytes written, cap "
                f"{self.cap:,}; first and last {self.cap // 2:,} bytes kept]\n")
        return bytes(self.head).decode("utf-8", "replace") + note + bytes(self.tail).decode("utf-8", "replace")


# ---------------------------------------------------------------- process accounting
def _pid_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _proc_stats() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, the fields of /proc/PID/stat after the command name: state, ppid, pgrp, session, ...)
    for every process that is still there when read."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        yield int(d), stat[stat.rindex(b")") + 2:].split()


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for pid, fields in _proc_stats():
        kids.setdefault(int(fields[1]), []).append(pid)
    return kids


def _descendants(root: int) -> list[int]:
    kids = _children_map()
    out, stack = [], [root]
    while stack:
        p = stack.pop()
        for c in kids.get(p, ()):
            out.append(c)
            stack.append(c)
    return out


def _count_in_sandbox(root: int, own_ns: str | None) -> int:
    """Processes started by the sandbox: descendants of the wrapper (orphans re-parent to the
    sandbox's PID-1 under bwrap, so they stay descendants)."""
    try:
        return len(_descendants(root))
    except OSError:
        return 0


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill everything the sandbox started. Under bwrap, killing the wrapper kills its PID
    namespace (--die-with-parent); for the other modes, kill the descendants and the group."""
    try:
        pids = _descendants(proc.pid)
    except OSError:
        pids = []
    for sig_target in [proc.pid] + pids:
        try:
            os.kill(sig_target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_MEMORY_PATTERNS = ("MemoryError", "can't allocate memory", "Cannot allocate memory",
                    "std::bad_alloc", "DefaultCPUAllocator: not enough memory", "out of memory")
_VIOLATION_PATTERNS = ("Read-only file system", "Network is unreachable",
                       "Temporary failure in name resolution", "Name or service not known")


def _classify_failure(returncode: int, stderr: str, isolation: str) -> str | None:
    """Name why a run that ended by itself failed, when that is a sandbox matter."""
    sig = -returncode if returncode < 0 else (returncode - 128 if isolation == "bwrap" and returncode > 128 else 0)
    if sig == signal.SIGXCPU:
        return "cpu-time"
    if sig == signal.SIGXFSZ:
        return "file-size"
    if returncode == 0:
        return None
    tail = stderr[-4000:]
    if any(p in tail for p in _MEMORY_PATTERNS) or sig == signal.SIGKILL:
        return "memory"  # RLIMIT_AS (MemoryError / bad_alloc) or the kernel's OOM killer
    if any(p in tail for p in _VIOLATION_PATTERNS):
        return "sandbox-violation"
    return None


# ---------------------------------------------------------------- run
def run(cmd: list[str], *, scratch: Path, env: dict[str, str], limits: Limits | None = None,
        allow_network: bool = False, allow_weak: bool = False,
        extra_ro_binds: Sequence[str | Path | tuple[str, str]] = (), timeout_s: float = 300.0,
        inner_scratch: str | None = None, hide: Sequence[str | Path] = ()) -> SandboxResult:
    """Run `cmd` confined to `scratch` (cwd). `env` is added to a minimal base environment and
    scrubbed of credentials. Never raises for anything the command does; raises
    SandboxUnavailable when bubblewrap is unusable and allow_weak is False (see
    `choose_isolation`)."""
    limits = limits or Limits()
    scratch = Path(scratch).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    isolation = choose_isolation(allow_weak=allow_weak, allow_network=allow_network)
    warnings: list[str] = []
    if isolation == "bwrap":
        prefix = _bwrap_argv(scratch, extra_ro_binds, inner_scratch, hide)
        if allow_network:
            prefix.remove("--unshare-net")
            notes.append("network allowed by the caller (--unsafe-allow-network)")
    elif isolation == "unshare":
        prefix = [shutil.which("unshare") or "unshare", "-Urn", "--"]
        notes.append("isolation: unshare -Urn (network blocked; writes NOT confined to scratch)")
        warnings.append(WEAK_WARNING)
    else:
        prefix = []
        notes.append("isolation: none (network and writes NOT confined)")
        warnings.append(NONE_WARNING)

    full_env = base_env(scratch)
    full_env.update(scrub_env(env))
    if isolation == "bwrap" and inner_scratch:
        # HOME and caches as the run sees them: under the inner path, not the host's scratch name
        full_env = {k: v.replace(str(scratch), inner_scratch) for k, v in full_env.items()}
    dropped = sorted(k for k in env if is_secret_name(k))
    if dropped:
        notes.append("dropped credential-like variables: " + ", ".join(dropped))

    start = time.monotonic()
    killed: list[str] = []  # first reason wins
    lock = threading.Lock()

    try:
        proc = subprocess.Popen(
            prefix + list(cmd), cwd=str(scratch), env=full_env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, preexec_fn=lambda: _set_limits(limits),
        )
    except OSError as exc:
        return SandboxResult(returncode=127, stdout="", stderr=f"could not start: {exc}",
                             wall_s=0.0, killed_reason=None, truncated=False,
                             isolation=isolation, notes=notes, warnings=warnings)

    def kill(reason: str) -> None:
        with lock:
            if not killed:
                killed.append(reason)
        _kill_tree(proc)

    out = _CappedReader(proc.stdout, limits.stdout_cap_bytes, lambda: kill("output-cap"))
    err = _CappedReader(proc.stderr, limits.stderr_cap_bytes, lambda: kill("output-cap"))
    out.start()
    err.start()

    own_ns = _pid_ns(os.getpid())
    deadline = start + timeout_s
    last_count = 0.0
    while proc.poll() is None:
        now = time.monotonic()
        if now >= deadline:
            kill("timeout")
            break
        if now - last_count >= 0.05:
            last_count = now
            if _count_in_sandbox(proc.pid, own_ns) > limits.processes:
                kill("process-limit")
                break
        time.sleep(0.02)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        proc.wait()
    # Under `unshare`/none, children can outlive the wrapper: clean up what is left.
    if isolation != "bwrap":
        for pid in _orphans_of_session(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    out.join(timeout=10)
    err.join(timeout=10)
    for stream in (proc.stdout, proc.stderr):
        try:
            stream.close()
        except OSError:
            pass
    wall = time.monotonic() - start
    stderr_text = err.text()
    reason = killed[0] if killed else _classify_failure(proc.returncode, stderr_text, isolation)
    truncated = out.over or err.over or out.total > limits.stdout_cap_bytes or err.total > limits.stderr_cap_bytes
    if reason:
        notes.append(f"killed: {reason}" if killed else f"failed: {reason}")
    return SandboxResult(returncode=proc.returncode, stdout=out.text(), stderr=stderr_text,
                         wall_s=wall, killed_reason=reason, truncated=truncated,
                         isolation=isolation, notes=notes, warnings=warnings)


def _orphans_of_session(sid: int) -> list[int]:
    """Processes still in the session the sandbox was started in (start_new_session makes
    the wrapper's pid the session id)."""
    return [pid for pid, fields in _proc_stats() if int(fields[3]) == sid]


def python_executable() -> str:
    """The interpreter sandboxed Python runs use (the real binary, not a pyenv shim)."""
    return sys.executable
