"""`dropcheck fix` as text: a header, the diff (if asked), one line per change, what could not be
fixed, the verification lines, and the outcome line. The words of each change come from
`FixResult.describe_change`; this module only styles them.
"""
from __future__ import annotations

from rich.console import Console
from rich.text import Text

from ...records import Change, FixResult, SourceFix
from ..console import write_plain

_ACTION_STYLE = {"move": "yellow", "remove": "red", "convert": "cyan", "add": "green"}


def render_fix(result: FixResult, console: Console, diff: bool = False, full_diff: bool = False) -> None:
    """What `dropcheck fix` did: a header, the diff (if asked: each change with the forward lines it
    touches, or with `full_diff` the whole generated code's diff), one line per change, what could
    not be fixed, then the verification lines. Rich on a terminal, plain lines when piped."""
    rich = console.is_terminal
    shape = "x".join(str(d) for d in result.input_shape) if result.input_shape else "?"
    model = getattr(result.model, "fixed_from", None) or type(result.model).__name__
    if rich:
        console.print(Text.assemble((result.target, "bold"), "  ", (model, "cyan"), "  ", (f"input {shape}", "dim")))
    else:
        write_plain(console, f"{result.target}: {model}, input {shape}")
    if diff:
        _render_diff(result.diff() if full_diff else result.moves_diff() or result.diff(), console)
    lines: list[Text] = [_change_line(result, change) for change in result.changes]
    if not result.changes:
        lines.append(Text("no changes", style="dim") if result.unfixable else
                     Text("no changes: the model already follows Guidelines 1 and 2", style="green"))
    lines.extend(Text(f"cannot fix  {item}", style="bold red") for item in result.unfixable)
    for check in result.checks:
        if rich:
            lines.append(Text.assemble(("✓ " if check.ok else "✗ ", "bold green" if check.ok else "bold red"),
                                       (check.name, "bold"), f": {check.detail}"))
        else:
            lines.append(Text(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}"))
    for line in lines:
        if rich:  # soft_wrap: a long line wraps in the terminal, never cropped
            console.print(Text("  ") + line, soft_wrap=True, highlight=False)
        else:
            write_plain(console, "  " + line.plain)


def render_fix_outcome(console: Console, message: str, ok: bool) -> None:
    """The last line of `dropcheck fix`: what was written, or why nothing was."""
    if console.is_terminal:
        console.print(Text(message, style="bold green" if ok else "bold red"), soft_wrap=True)
    else:
        write_plain(console, message)


def _render_diff(text: str, console: Console) -> None:
    if not text:
        text = "(the forward code is unchanged)\n"
    if console.is_terminal:
        from rich.syntax import Syntax  # loaded on use: only `fix --diff` on a terminal needs it (and pygments)

        console.print(Syntax(text.rstrip("\n"), "diff", theme="ansi_dark", background_color="default",
                             word_wrap=True))
    else:
        write_plain(console, text.rstrip("\n"))


def _change_line(result: FixResult, change: Change) -> Text:
    """`move  stages.0.0.drop  P3 -> P6 before stages.0.0.conv2  (DC001, p=0.2)`, styled by action."""
    subject, detail, why = result.describe_change(change)
    style = _ACTION_STYLE.get(change.action, "")
    return Text.assemble((change.action, f"bold {style}".strip()), "  ", (subject, "bold"), "  ", detail,
                         "  ", (f"({why})", "dim"))


def render_source_fix(result: FixResult, console: Console, show_diff: bool = True) -> None:
    """The source patch of `fix` on the user's own code: what cannot be written in source (per site,
    why, what to do), then the unified diff of their files."""
    source = result.source
    if source is None:
        return
    for item in source.not_in_source:
        line = f"not in source  {item.site}: {item.reason} ({item.hint})"
        if console.is_terminal:
            console.print(Text("  ") + Text(line, style="bold yellow"), soft_wrap=True, highlight=False)
        else:
            write_plain(console, "  " + line)
    for line in source_fix_lines(source):
        if console.is_terminal:
            console.print(Text("  ") + Text(line, style="yellow" if line.startswith("note") else ""),
                          soft_wrap=True, highlight=False)
        else:
            write_plain(console, "  " + line)
    if show_diff:
        render_source_diff(source.diff, console)


def source_fix_lines(source: SourceFix) -> list[str]:
    """The notes (a p that stays as written), the state_dict keys the patch renames, and what
    becomes of the checkpoint, one plain line each."""
    lines = [f"note  {note.site}: {note.message}" for note in source.notes]
    if source.key_map:
        lines.append(f"key mapping ({len(source.key_map)} state_dict keys renamed, old -> new):")
        lines.extend(f"  {old} -> {new}" for old, new in source.key_map.items())
    if source.checkpoint is not None:
        verb = "converted into" if source.checkpoint_written else "to be converted into (with --in-place)"
        lines.append(f"checkpoint  {source.checkpoint.path} {verb} {source.checkpoint_out}"
                     + ("" if source.key_map else "; no key changes"))
    return lines


def render_source_diff(text: str, console: Console) -> None:
    """The unified diff of the user's files, or a line saying there is none."""
    _render_diff(text or "(no change to your source files)\n", console)
