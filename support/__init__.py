"""The machinery behind the teaching files: skip this package on a first read.

Each module does one job and opens with a line saying what it is and when a reader needs it.
Nothing here imports init.py, train.py or run.py.
"""
