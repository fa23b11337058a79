"""The speedrun harness: data, timed runs, the records log, leaderboard, record submissions, comparisons.

Entry points (each `python -m harness.<name> --help`):
  data        FineWeb download, the embedded Shakespeare corpus, shard inspection
  run         launch train_gpt.py for N seeds, with live progress, and append each run to the records log
  leaderboard render leaderboard.md from records/
  submit      validate a record attempt from its runs' own logs and write records/<date>_<name>/
  verify      re-check a record folder: code hashes and statistics
  compare     ablations: run interleaved variants or compare finished runs, with honest statistics
  history     a modded-nanogpt records/ tree's figures, recomputed from its logs, with what differs
"""
