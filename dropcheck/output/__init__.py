"""Output: every record drawn in every format. Reads records only, never a stage (so it imports no
torch); rule metadata for SARIF comes in as Rule records from the caller.

  formats.py         which formats each command offers, and the one dispatch over them
  text/              text per record (audit, measure, fix, rules, reproduce, training)
  json_documents.py  JSON schema 1 of every command (and train-compare's --resume file read back)
  sarif.py           SARIF 2.1.0 for code scanning
  github.py          GitHub Actions annotations
  markdown.py        the audit as a job summary, a rule's page
  summary.py         the summary and failed-target lines every audit format shares
  locations.py       the file and line a finding points at
  console.py         plain text out byte for byte; aligned columns
  progress.py        spinners and progress bars (stderr)
  figures.py         matplotlib plots (measure --plot, train-compare --plot)
"""
