"""Text output, one module per record: audit, measure, fix, rules, reproduce, training.

Each has two faces, chosen by `console.is_terminal`: rich colour and tables on a terminal;
plain lines when piped (CI logs, pre-commit), written through `console.write_plain`, which
never wraps, so a finding or an error stays one line whatever the width.
"""
