"""The `golf-audit` pre-commit hook: the gate's static checks on the record folders a commit touches.

pre-commit passes the staged file names; a record is judged as a folder (its submission.json and
logs say which flags it runs with), so each name is mapped to its `records/track_*/<name>/` folder
and every such folder is audited once with the static layer (`golf-audit FOLDER...`).
Files outside a record folder are ignored (the layout rule needs the whole PR: `golf-audit ci`).

    python -m harness.ci.precommit [golf-audit options...] -- FILE...
    python -m harness.ci.precommit [--option=value...] FILE...   (pre-commit's way: args, then files)

Without `--`, arguments starting with "-" are options: give them as `--fail-on=high`, one word each.
"""
from __future__ import annotations

import sys
from pathlib import Path

from harness.challenge.layout import record_folder_of


def folders_of(filenames: list[str]) -> list[str]:
    out: list[str] = []
    for name in filenames:
        folder = record_folder_of(Path(name).as_posix())  # pathlib drops a leading "./"
        if folder and folder not in out and Path(folder).is_dir():
            out.append(folder)
    return out


def main(argv: list[str] | None = None) -> int:
    from harness.cli.audit import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        i = argv.index("--")
        options, filenames = argv[:i], argv[i + 1:]
    else:
        options, filenames = [o for o in argv if o.startswith("-")], [f for f in argv if not f.startswith("-")]
    folders = folders_of(filenames)
    if not folders:
        return 0  # nothing in a record folder changed
    return cli_main([*options, *folders])


if __name__ == "__main__":
    sys.exit(main())
