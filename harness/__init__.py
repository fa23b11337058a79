"""The speedrun harness: data, timed runs, the records log, leaderboard, record submissions, comparisons.

Each command is `python -m harness.<name>` (`--help` says the rest); README.md's table of commands lists them.
"""
