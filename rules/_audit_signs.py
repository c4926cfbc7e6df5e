"""API knowledge for GA013 audit-tampering, kept apart from the rule's logic (leakage-analysis
style): what touches the instrumentation the dynamic layer installs, and what tells a run that
it is audited. Names are fully qualified (after the import table); a module starting with `_`
is not a rule (the registry skips it)."""
from __future__ import annotations

import re

# (pattern on the resolved dotted name, what it reaches). The tracer is a torch dispatch mode +
# function mode, optimizer/module hooks and Python-level shims: each entry reaches one of them.
INSTRUMENTATION = [
    (re.compile(r"^torch\.utils\._python_dispatch\._\w+$"), "the torch dispatch-mode stack"),
    (re.compile(r"^torch\._C\.(_(len|pop|push|get)_torch_(dispatch|function)_stack\w*|_get_(dispatch|function)_stack_at"
                r"|_(set|unset)_dispatch_mode|_DisableTorchDispatch|DisableTorchFunction\w*"
                r"|_is_torch_function_mode_enabled)$"), "the torch mode stacks"),
    (re.compile(r"^torch\.overrides\._(pop_mode|push_mode|pop_mode_temporarily|get_current_function_mode\w*"
                r"|len_torch_function_stack)$"), "the torch function-mode stack"),
    (re.compile(r"^torch\.optim\.optimizer\._global_\w*hooks$|^torch\.nn\.modules\.module\._global_\w*hooks?$"),
     "torch's global optimizer/module hooks"),
    (re.compile(r"^sys\.(settrace|setprofile|gettrace|getprofile|monitoring(\.\w+)*)$"
                r"|^threading\.(settrace|setprofile|gettrace|getprofile)(_all_threads)?$"),
     "the interpreter's trace/profile hooks"),
    (re.compile(r"^gc\.(get_objects|get_referrers)$"), "every live object (the garbage collector's lists)"),
    (re.compile(r"^inspect\.(stack|getouterframes|trace)$"), "the callers' frames"),
    # the dynamic layer's modules (the tracer, the runner, the shims); harness.challenge only
    # describes the data format (the reference model reads shards with it)
    (re.compile(r"^(harness\.dynamic|golf_audit)(\.|$)"), "golf-audit's dynamic layer"),
]
# A name in a statement that can reach INSTRUMENTATION has one of these as a component (after
# the import table): the rule walks only statements that have one (most statements have none).
KEY_PARTS = {"_python_dispatch", "_C", "overrides", "settrace", "setprofile", "gettrace", "getprofile", "monitoring",
             "get_objects", "get_referrers", "stack", "getouterframes", "trace", "modules", "_getframe", "harness",
             "golf_audit"}
KEY_PREFIX = "_global_"
# The same names spelled as strings (getattr(torch._C, "_len_torch_dispatch_stack"),
# importlib.import_module("torch.utils._python_dispatch")).
PRIVATE_NAMES = {
    "_len_torch_dispatch_stack", "_pop_torch_dispatch_stack", "_len_torch_function_stack",
    "_pop_torch_function_stack", "_get_dispatch_stack_at", "_get_function_stack_at", "_get_current_dispatch_mode",
    "_get_current_dispatch_mode_stack", "_pop_mode", "_pop_mode_temporarily", "_disable_current_modes",
    "_get_current_function_mode", "_get_current_function_mode_stack", "_python_dispatch", "settrace",
    "setprofile", "gettrace", "_getframe", "get_referrers", "_global_optimizer_pre_hooks",
    "_global_optimizer_post_hooks", "torch.utils._python_dispatch",
}
FRAME_ATTRS = {"f_back"}  # walking up to a caller's frame: the harness's, under an audit

# ---------------------------------------------------------------- signs of an audit
# Environment names that are not hyperparameters: the runner's plumbing, the machine, CI.
ENV_SIGN = re.compile(r"^(RUN_ID|HOME|USER|LOGNAME|HOSTNAME|PWD|TMPDIR|PYTHONPATH|CI|CUDA_VISIBLE_DEVICES|"
                      r"OMP_NUM_THREADS|TORCHINDUCTOR_CACHE_DIR|XDG_\w+|GITHUB_\w+|PYTEST_\w+|\w*AUDIT\w*|"
                      r"\w*SANDBOX\w*|\w*GOLF\w*|WORLD_SIZE|LOCAL_WORLD_SIZE)$")
ENV_READS = re.compile(r"^os\.(environ(\.get|\.setdefault|\.__getitem__)?|getenv)$")
SIGN_CALLS = [
    (re.compile(r"^torch\.cuda\.(get_device_name|get_device_properties|get_device_capability|device_count|"
                r"is_available|mem_get_info)$"), "the GPU it runs on"),
    (re.compile(r"^torch\.distributed\.get_world_size$"), "the world size"),
    (re.compile(r"^(time\.(time|time_ns|perf_counter|perf_counter_ns|monotonic|monotonic_ns|process_time)"
                r"|datetime\.datetime\.(now|utcnow|today)|datetime\.(now|utcnow|today))$"), "the wall clock"),
    (re.compile(r"^(os\.(getcwd|cpu_count|getlogin|uname|getpid|getppid)|pathlib\.Path\.(cwd|home)"
                r"|socket\.gethostname|platform\.\w+|getpass\.getuser|tempfile\.gettempdir|multiprocessing\.cpu_count"
                r"|psutil\.\w+)$"), "the machine or the run's paths"),
]
SIGN_NAMES = {"__file__": "the script's path", "sys.argv": "the command line", "sys.executable": "the interpreter path",
              "sys.path": "the import path"}
# A string an `if` compares with that only an audit's paths or run ids contain.
AUDIT_STRING = re.compile(r"audit|(?<![a-z])toy(?![a-z])|^/tmp|/tmp/|golf|sandbox|scratch|pytest|bwrap|unshare",
                          re.IGNORECASE)

# Scale: a toy-scale audit runs a smaller model for fewer steps than the real run, so a model-size
# or step-count hyperparameter compared with a number tells the script which run it is in.
SCALE_NAME = re.compile(r"^(model_dim|d_model|n_embd|embed_dim|embedding_dim|hidden_size|hidden_dim|width|"
                        r"num_layers|n_layers?|depth|num_heads|n_heads?|iterations|max_steps|train_steps|"
                        r"num_steps|total_steps|MODEL_DIM|NUM_LAYERS|NUM_HEADS|ITERATIONS)$")

# The calls that make a branch a scoring or a training path.
TRAIN_OR_SCORE = re.compile(r"^(backward|step|zero_grad|forward_logits|forward_per_token|cross_entropy|nll_loss|"
                            r"\w*ttt\w*|\w*train\w*|\w*eval\w*|\w*score\w*|\w*adapt\w*|\w*lora\w*)$", re.IGNORECASE)
