"""What the audit benchmarks share: the flags that pick a run (dataset, model, members, epochs) over the defaults."""

from __future__ import annotations

import argparse

from mia_core.config import DEFAULT_CONFIG, ExperimentConfig


def run_parser(doc: str) -> argparse.ArgumentParser:
    """A parser with --dataset, --model, --members and --epochs, each defaulting to the default run's."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--dataset", default=DEFAULT_CONFIG.dataset)
    p.add_argument("--model", default=DEFAULT_CONFIG.model)
    p.add_argument("--members", type=int, default=DEFAULT_CONFIG.members)
    p.add_argument("--epochs", type=int, default=DEFAULT_CONFIG.epochs)
    return p


def run_config(a: argparse.Namespace, **fields) -> ExperimentConfig:
    """The default run with the parsed flags (and `fields`) in place."""
    return DEFAULT_CONFIG.replace(dataset=a.dataset, model=a.model, members=a.members, epochs=a.epochs, **fields)
