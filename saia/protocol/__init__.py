"""The one contract between the hub and the login node, imported by both sides.

What the hub may send (the command grammar and the session's paths), what the
entrypoint answers (exit codes, job records), how saia's jobs are named and
listed in Slurm, and the ids both sides check. It imports nothing else of saia
and runs on the login node's Python (3.9 and newer), so nothing here may need
more than the standard library and h2.
"""
