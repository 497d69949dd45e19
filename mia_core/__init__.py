"""Membership Leakage Explorer core: data, models, training, distances, attacks, metrics, store.

Plain Python and PyTorch; the Streamlit app and the CLI are thin layers over it.
"""

__version__ = "0.4.0"  # part of every store key: bump when results would change
