"""Sizing pools from traffic: the emulator's own batching model run in virtual time (`simulate.py`), and the
split of a GPU budget into pools that meets each traffic class's p95 target (`split.py`)."""
