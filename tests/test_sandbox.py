"""The sandbox holds: no network, no writes outside scratch, limits on time, memory,
processes and output, no credentials. Each test runs a small hostile Python script."""
from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.dynamic.run import sandbox
from harness.dynamic.run.sandbox import GiB, MiB, Limits

pytestmark = pytest.mark.skipif(sandbox.available_isolation() is None,
                                reason="no sandbox mechanism on this machine")


def run_py(tmp_path: Path, code: str, *, limits: Limits | None = None, env: dict | None = None,
           timeout_s: float = 60):
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    (scratch / "s.py").write_text(textwrap.dedent(code))
    return sandbox.run([sys.executable, "s.py"], scratch=scratch, env=env or {},
                       limits=limits or Limits(), timeout_s=timeout_s)


def test_ordinary_script_runs_and_writes_in_scratch(tmp_path):
    r = run_py(tmp_path, """
        import os
        open("out.txt", "w").write("ok")
        print("cwd", os.getcwd())
    """)
    assert r.returncode == 0, r.stderr
    assert r.killed_reason is None
    assert (tmp_path / "scratch" / "out.txt").read_text() == "ok"
    assert "cwd " + str((tmp_path / "scratch").resolve()) in r.stdout


def test_network_is_blocked(tmp_path):
    r = run_py(tmp_path, """
        import socket, urllib.request
        results = []
        s = socket.socket(); s.settimeout(3)
        try:
            s.connect(("1.1.1.1", 80)); results.append("tcp-connected")
        except OSError as e:
            results.append("tcp-blocked")
        try:
            urllib.request.urlopen("http://example.com", timeout=3); results.append("http-ok")
        except Exception:
            results.append("http-blocked")
        print(" ".join(results))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["tcp-blocked", "http-blocked"]


def test_loopback_works_inside(tmp_path):
    # torchrun/gloo rendezvous needs 127.0.0.1 inside the network namespace.
    r = run_py(tmp_path, """
        import socket
        srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
        c = socket.create_connection(srv.getsockname(), timeout=3)
        conn, _ = srv.accept(); c.sendall(b"hi"); print(conn.recv(2).decode())
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hi"


@pytest.mark.skipif(sandbox.available_isolation() != "bwrap", reason="only bwrap confines writes")
def test_writes_outside_scratch_are_blocked(tmp_path):
    victim = tmp_path / "outside.txt"  # tmp_path itself is outside scratch
    victim.write_text("original")
    home_rc = Path.home() / ".bashrc"
    before = home_rc.read_bytes() if home_rc.exists() else None
    repo_file = Path(__file__).resolve()
    repo_before = repo_file.read_bytes()
    r = run_py(tmp_path, f"""
        import errno
        for path in [{str(victim)!r}, {str(home_rc)!r}, {str(repo_file)!r}]:
            try:
                with open(path, "a") as fh:
                    fh.write("pwned")
                print("wrote", path)
            except OSError as e:
                print("blocked", errno.errorcode[e.errno])
    """)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.split("\n") if line]
    assert len(lines) == 3
    # The /tmp victim may be "written" inside the sandbox's private /tmp; the real one is not.
    # A path under /tmp (a CI clone) is simply absent inside the sandbox: ENOENT is blocked too.
    for line in lines[1:]:
        assert line in ("blocked EROFS", "blocked EACCES", "blocked ENOENT"), r.stdout
    assert victim.read_text() == "original"
    assert (home_rc.read_bytes() if home_rc.exists() else None) == before
    assert repo_file.read_bytes() == repo_before


def test_tmp_is_private(tmp_path):
    marker = Path("/tmp") / f"golf_audit_sandbox_probe_{os.getpid()}"
    r = run_py(tmp_path, f"""
        open({str(marker)!r}, "w").write("x")
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    if r.isolation == "bwrap":
        assert not marker.exists()
    else:
        marker.unlink(missing_ok=True)


def test_timeout_kills_with_reason(tmp_path):
    t0 = time.monotonic()
    r = run_py(tmp_path, """
        import subprocess, time
        subprocess.Popen(["sleep", "1000"])  # a child must die too
        print("sleeping", flush=True)
        time.sleep(1000)
    """, timeout_s=3)
    assert time.monotonic() - t0 < 20
    assert r.killed_reason == "timeout"
    assert "sleeping" in r.stdout


def test_huge_allocation_fails_with_memory_reason(tmp_path):
    r = run_py(tmp_path, """
        x = bytearray(50 * 1024 ** 3)
        print("allocated")
    """, limits=Limits(address_space_bytes=4 * GiB))
    assert "allocated" not in r.stdout
    assert r.returncode != 0
    assert r.killed_reason == "memory"


def test_fork_bomb_is_contained(tmp_path):
    t0 = time.monotonic()
    r = run_py(tmp_path, """
        import os, time
        while True:
            try:
                if os.fork() == 0:
                    time.sleep(0.05)
            except OSError:
                time.sleep(0.01)
    """, limits=Limits(processes=64), timeout_s=30)
    assert time.monotonic() - t0 < 25
    assert r.killed_reason in ("process-limit", "timeout")
    assert r.killed_reason == "process-limit"
    time.sleep(0.5)
    # Nothing from the bomb survives: no process is left with its cwd in our scratch.
    leftovers = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.readlink(f"/proc/{d}/cwd").startswith(str(tmp_path)):
                    leftovers.append(d)
            except OSError:
                continue
    assert leftovers == []


def test_secrets_are_scrubbed(tmp_path):
    env = {"GITHUB_TOKEN": "ghp_x", "AWS_SECRET_ACCESS_KEY": "a", "HF_TOKEN": "h",
           "MY_API_KEY": "k", "OPENAI_API_KEY": "o", "NUM_LAYERS": "2"}
    os.environ["GOLF_AUDIT_TEST_SECRET_TOKEN"] = "leak"  # inherited env must not pass either
    try:
        r = run_py(tmp_path, """
            import os
            print(sorted(k for k in os.environ if k in {"GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY",
                  "HF_TOKEN", "MY_API_KEY", "OPENAI_API_KEY", "GOLF_AUDIT_TEST_SECRET_TOKEN"}))
            print(os.environ.get("NUM_LAYERS"))
        """, env=env)
    finally:
        del os.environ["GOLF_AUDIT_TEST_SECRET_TOKEN"]
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["[]", "2"]


def test_output_flood_is_truncated_fast(tmp_path):
    t0 = time.monotonic()
    r = run_py(tmp_path, """
        import sys
        print("FIRST LINE", flush=True)
        block = "x" * (1 << 20) + "\\n"
        for _ in range(1024):  # 1 GiB
            sys.stdout.write(block)
    """, limits=Limits(stdout_cap_bytes=1 * MiB))
    assert time.monotonic() - t0 < 30
    assert r.truncated
    assert r.killed_reason == "output-cap"
    assert r.stdout.startswith("FIRST LINE")
    assert "output truncated" in r.stdout
    assert len(r.stdout) < 2 * MiB


def test_secret_name_patterns():
    for name in ["GITHUB_TOKEN", "AWS_ACCESS_KEY_ID", "HF_HOME", "AZURE_CLIENT_SECRET",
                 "GOOGLE_APPLICATION_CREDENTIALS", "SOME_SECRET", "X_API_KEY", "NPM_TOKEN"]:
        assert sandbox.is_secret_name(name), name
    for name in ["NUM_LAYERS", "MODEL_DIM", "PATH", "DATA_PATH", "TTT_EPOCHS", "SEED", "NUM_KV_HEADS",
                 "TRAIN_BATCH_TOKENS", "VAL_TOKENS", "TTT_CHUNK_TOKENS"]:
        assert not sandbox.is_secret_name(name), name
