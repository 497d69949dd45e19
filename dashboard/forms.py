"""Form widgets derived from the config's field metadata (label, help, range, choices): one per field."""

from __future__ import annotations

from typing import Any

from mia_core.config import ExperimentConfig


def field_input(container, name: str, value: Any, *, key: str | None = None, options=None, format_func=None):
    """The widget for config field `name` in `container`, at `value`: a select box for a field with choices,
    a number input bounded by the field's range otherwise. `options` narrows the choices."""
    p = ExperimentConfig.params()[name]
    label, key = p.label or name, key or f"cfg_{name}"
    if p.choices is not None or options is not None:
        opts = list(options if options is not None else p.choices())
        kw = {"format_func": format_func} if format_func else {}
        return container.selectbox(label, opts, index=opts.index(value) if value in opts else 0, help=p.help,
                                   key=key, **kw)
    if p.kind is int:
        chosen = container.number_input(label, min_value=None if p.low is None else int(p.low),
                                        max_value=None if p.high is None else int(p.high),
                                        value=None if value is None else int(value), step=1, help=p.help, key=key,
                                        placeholder="automatic" if p.optional else None)
        return None if chosen is None and p.optional else int(chosen)
    if p.kind is float:
        return float(container.number_input(label, min_value=p.low, max_value=p.high, value=float(value),
                                            format="%g", help=p.help, key=key))
    return container.text_input(label, value="" if value is None else str(value), help=p.help, key=key)
