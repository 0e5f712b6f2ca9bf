"""`fix --checkpoint OLD --checkpoint-out NEW`: the cheap checks of the two paths, before any model
loads. A source patch that renames state_dict keys converts OLD into NEW; -o and library targets
keep every key (their state_dict check says so), so they take no checkpoint."""
from __future__ import annotations

import os
from pathlib import Path

from ..records import DropcheckError


def check_checkpoint_options(checkpoint: Path | None, checkpoint_out: Path | None, in_source: bool,
                             force: bool) -> None:
    if checkpoint is None and checkpoint_out is None:
        return
    if checkpoint is None or checkpoint_out is None:
        given = "--checkpoint" if checkpoint is not None else "--checkpoint-out"
        raise DropcheckError("usage", f"{given} needs its pair: the checkpoint to convert and where the converted "
                             "one goes", "give both: --checkpoint old.pt --checkpoint-out new.pt")
    if not in_source:
        raise DropcheckError("usage", "--checkpoint converts a checkpoint for the patch to your own source files; "
                             "-o, --dry-run and library targets keep every state_dict key, so it loads as it is",
                             "drop --checkpoint and --checkpoint-out, or fix a file or module target with "
                             "--diff or --in-place")
    if not checkpoint.is_file():
        raise DropcheckError("usage", f"--checkpoint {checkpoint}: no such file",
                             "give the checkpoint your training saved (torch.save)")
    if checkpoint_out.resolve() == checkpoint.resolve() or (
            checkpoint_out.exists() and os.path.samefile(checkpoint_out, checkpoint)):
        raise DropcheckError("usage", f"--checkpoint-out {checkpoint_out} is the checkpoint to convert; dropcheck "
                             "never writes over it", "name a new file, e.g. --checkpoint-out new.pt")
    if checkpoint_out.is_dir():
        raise DropcheckError("usage", f"--checkpoint-out {checkpoint_out} is a directory", "name a file")
    if not checkpoint_out.resolve().parent.is_dir():
        raise DropcheckError("usage", f"--checkpoint-out {checkpoint_out}: no directory "
                             f"{checkpoint_out.parent}", "create it first, or name a file in an existing one")
    if checkpoint_out.exists() and not force:
        raise DropcheckError("usage", f"--checkpoint-out {checkpoint_out} exists", "pass --force to replace it")
