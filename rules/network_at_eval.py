"""GA005 network-at-eval: downloads or network access from the submission."""
from __future__ import annotations

import re

import libcst as cst

from harness.engine import ModuleContext, dotted
from harness.findings import Confidence, Layer, Severity
from harness.rule import Invalid, Rule, Valid

NETWORK_MODULES = ("requests", "urllib.request", "urllib3", "http.client", "httpx", "aiohttp", "socket",
                   "huggingface_hub", "ftplib", "smtplib", "paramiko", "websocket", "wget", "boto3", "gdown")
NETWORK_CALLS = re.compile(r"(^|\.)(urlopen|urlretrieve|hf_hub_download|snapshot_download|load_dataset|"
                           r"from_pretrained|create_connection|download_url_to_file|load_state_dict_from_url)$|"
                           r"^torch\.hub\.|^requests\.|^socket\.socket$")
SHELL_CALLS = re.compile(r"(^|\.)(system|popen|run|call|check_call|check_output|Popen|getoutput)$")
SHELL_NETWORK = re.compile(r"\b(curl|wget|pip3? install|git clone|scp|rsync|ssh|nc|aria2c|huggingface-cli)\b")


class NetworkAtEval(Rule):
    id = "GA005"
    name = "network-at-eval"
    severity = Severity.HIGH
    confidence = Confidence.HIGH
    layers = (Layer.STATIC,)
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
''', "nvidia-smi is local")]
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
                            yield self.finding(Layer.STATIC, f"imports the network module `{m}`",
                                               ctx.location(st.line, where), [f"`{ctx.code(node)}`"])
                    continue
                for call in st.calls:
                    name = ctx.resolve(dotted(call.func))
                    if NETWORK_CALLS.search(name):
                        yield self.finding(Layer.STATIC, f"calls `{name}`, which reaches the network",
                                           ctx.location(st.line, where), [f"`{ctx.code(call)[:160]}`"])
                    elif SHELL_CALLS.search(name) and (name.startswith(("os.", "subprocess.")) or "subprocess" in name):
                        text = " ".join(ctx.code(a.value) for a in call.args)
                        if SHELL_NETWORK.search(text):
                            yield self.finding(Layer.STATIC, "runs a shell command that reaches the network",
                                               ctx.location(st.line, where), [f"`{ctx.code(call)[:160]}`"])
