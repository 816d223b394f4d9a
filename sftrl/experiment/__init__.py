"""The experiment half: sweeps, records, statistics, plots and reports over run directories.

Nothing in this package imports torch or the trainer; runs are subprocesses, and results are
read from the files they write.
"""
