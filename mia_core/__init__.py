"""Membership Leakage Explorer core: data, models, training, distances, attacks, metrics, store.

Plain Python and PyTorch; the Streamlit app and the CLI are thin layers over it.
"""

__version__ = "0.4.0"  # part of every store key: bump when results would change


def __getattr__(name: str):
    """`mia_core.audit`, `mia_core.audit_onnx` and `mia_core.TrainingRecipe`, imported on first use (see user_audit)."""
    if name in ("audit", "audit_onnx", "TrainingRecipe"):
        from . import user_audit

        return getattr(user_audit, name)
    raise AttributeError(f"module 'mia_core' has no attribute '{name}'")
