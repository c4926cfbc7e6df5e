"""GA005 network-at-eval: downloads or network access from the submission."""
from __future__ import annotations

import re

import libcst as cst

from harness.static.engine import ModuleContext, collect, dotted
from harness.core.findings import Confidence, Layer, Severity
from harness.core.rule import Invalid, Rule, Valid

NETWORK_MODULES = ("requests", "urllib.request", "urllib3", "http.client", "httpx", "aiohttp", "socket",
                   "huggingface_hub", "ftplib", "smtplib", "paramiko", "websocket", "wget", "boto3", "gdown")
NETWORK_CALLS = re.compile(r"(^|\.)(urlopen|urlretrieve|hf_hub_download|snapshot_download|load_dataset|"
                           r"from_pretrained|create_connection|download_url_to_file|load_state_dict_from_url)$|"
                           r"^torch\.hub\.|^requests\.|^socket\.socket$")
SHELL_CALLS = re.compile(r"(^|\.)(system|popen|run|call|check_call|check_output|Popen|getoutput)$")
SHELL_NETWORK = re.compile(r"\b(curl|wget|pip3? install|git clone|scp|rsync|ssh|nc|aria2c|huggingface-cli)\b")


class NetworkAtEval(Rule, id="GA005", name="network-at-eval",
                    severity=Severity.HIGH, confidence=Confidence.HIGH, layers=(Layer.STATIC,)):
    summary = "Finds network access from the submission: HTTP clients, sockets, hub downloads, shell curl/wget/pip."
    why = ("The artifact must be self-contained: 'No external downloads, training data or network during "
           "evaluation'. A download can fetch weights or validation-derived data that are not counted in the "
           "16,000,000 bytes.")
    example = '''
import urllib.request
def main():
    urllib.request.urlretrieve("https://example.com/w.bin", "w.bin")
'''
    use_instead = '''
import torch
def main():
    state = torch.load("final_model.pt")  # written by this run's training
'''
    known_problems = "An import that is never used is still reported (at the import line): remove it."
    references = ("README: no external downloads or network during evaluation",)
    fix = "Remove the network access; everything the eval needs must be in the counted artifact."

    VALID = [Valid('''
import subprocess
def gpu_info():
    return subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
''', "nvidia-smi is local"),
             Valid('''
import urllib.parse
def name_of(path):
    return urllib.parse.quote(path)
''', "urllib.parse does no I/O"),
             Valid('''
import torch.distributed as dist
def setup(rank, world):
    dist.init_process_group("nccl", rank=rank, world_size=world)
''', "NCCL between the run's own GPUs is not network access to the outside")]
    INVALID = [
        Invalid('''
import urllib.request
def main():
    urllib.request.urlretrieve("https://example.com/w.bin", "w.bin")
''', line=2, note="urllib import"),
        Invalid('''
import subprocess
def setup():
    subprocess.run("pip install brotli", shell=True)
''', line=4, function="setup", note="pip install at run time"),
        Invalid('''
from huggingface_hub import hf_hub_download
''', line=2, note="hub download"),
        Invalid('''
import torch
def load_weights(url):
    import requests
    blob = requests.get(url, timeout=30).content
    return torch.load(blob)
''', line=4, function="load_weights", note="requests, imported inside the function"),
        Invalid('''
import subprocess, sys
def ensure_brotli():
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "brotli"])
''', line=4, function="ensure_brotli", note="pip install as a list-form command"),
        Invalid('''
import socket
def phone_home(host):
    s = socket.create_connection((host, 443))
    s.close()
''', line=2, note="raw socket"),
        Invalid('''
import subprocess
def fetch():
    subprocess.check_call(["curl", "-sSLo", "tok.model", "https://example.com/tok.model"])
''', line=4, function="fetch", message_contains="shell", note="subprocess curl"),
        Invalid('''
import os
def fetch():
    os.system("wget -q https://example.com/val_cache.bin")
''', line=4, function="fetch", note="os.system wget"),
        Invalid('''
from urllib.request import urlopen as get
def fetch(u):
    return get(u).read()
''', line=2, note="aliased urlopen"),
    ]

    def check_static(self, ctx: ModuleContext):
        for q, fn in ctx.functions.items():
            where = None if q == "<module>" else q
            for st in fn.stmts:
                node = st.node
                if isinstance(node, (cst.Import, cst.ImportFrom)):
                    mods = []
                    if isinstance(node, cst.Import):
                        mods = [dotted(a.name) for a in node.names]
                    elif node.module is not None:
                        mods = [dotted(node.module)]
                    for m in mods:
                        if any(m == n or m.startswith(n + ".") for n in NETWORK_MODULES):
                            yield self.static_finding(ctx, st.line, where, f"imports the network module `{m}`",
                                                      [f"`{ctx.code(node)}`"], **ctx.reach_fields(q, st))
                    continue
                for call in st.calls:
                    name = ctx.resolve(dotted(call.func))
                    if NETWORK_CALLS.search(name):
                        yield self.static_finding(ctx, st.line, where, f"calls `{name}`, which reaches the network",
                                                  [f"`{ctx.code(call)[:160]}`"], **ctx.reach_fields(q, st))
                    elif SHELL_CALLS.search(name) and (name.startswith(("os.", "subprocess.")) or "subprocess" in name):
                        # list-form commands: ["python", "-m", "pip", "install", ...] -> words
                        words = [w for a in call.args for w in collect(a.value).strings]
                        text = " ".join(words) + " " + " ".join(ctx.code(a.value) for a in call.args)
                        if SHELL_NETWORK.search(text):
                            yield self.static_finding(ctx, st.line, where, "runs a shell command that reaches the network",
                                                      [f"`{ctx.code(call)[:160]}`"], **ctx.reach_fields(q, st))
