"""Where a run's files live, named so that nothing reads as an audit.

A submission that wants a clean verdict may look for signs that it is being audited (its paths,
its working folder, the GPU name). The names here are what an ordinary contest run could have:
a scratch folder called like a checkout of the challenge, a hidden runtime folder beside the
script. What stays observable is documented in docs/sandbox.md."""

import os

# Where bubblewrap mounts the scratch folder inside the sandbox. One fixed path for every run:
# contest data loaders seed their sampling from the shard *paths* (the April records' loader),
# so a random scratch name made two runs of the same script train on different batches.
INNER_SCRATCH = "/tmp/parameter-golf"

# The runner's own folder inside scratch (config, bootstrap reports, traces, the fake
# nvidia-smi, toy data when the submission ships its own data/).
STATE_DIR = ".runtime"

# Prefix of the real scratch folder (the path a script sees without bubblewrap).
SCRATCH_PREFIX = "pg-run-"

# Where bubblewrap mounts our own code (the tracer, the bootstrap) and the files the tracer
# reads, so that no path the run can see names the tool or its checkout.
INNER_LIBS = "/tmp/.lib"


class Aliases:
    """Host paths the sandboxed run needs, each mounted read-only at a neutral path under
    INNER_LIBS (bubblewrap); without bubblewrap every path is its host path."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.binds: dict[str, str] = {}  # host path -> path inside

    def __call__(self, host: str) -> str:
        if not self.enabled:
            return host
        if host not in self.binds:
            name = "" if os.path.isdir(host) else os.path.basename(host.rstrip("/"))
            self.binds[host] = f"{INNER_LIBS}/{len(self.binds)}" + (f"-{name}" if name else "")
        return self.binds[host]
