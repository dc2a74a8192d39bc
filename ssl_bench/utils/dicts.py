"""Nested dicts as flat dotted keys, and the keys in which two of them differ (e.g. two runs' configs)."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Tuple


def flatten_keys(tree: dict, prefix: str = "") -> dict:
    """A nested dict as {"dotted.key": leaf value}, e.g. to compare two configs key by key."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing_keys(a: dict, b: dict, ignore: Tuple[str, ...] = (), defaults: Optional[Mapping[str, Any]] = None
                   ) -> List[str]:
    """The dotted keys whose values differ between two flat dicts (flatten_keys), except those starting with
    ``ignore``. A key that only one side has is no difference while it keeps its value of ``defaults`` (for two
    configs, config.schema_defaults: a key added to the schema after the other run was made)."""
    defaults = defaults or {}

    def added_with_default(k: str) -> bool:
        present = b if k not in a else a if k not in b else None
        return present is not None and k in defaults and present[k] == defaults[k]

    return sorted(k for k in a.keys() | b.keys()
                  if a.get(k) != b.get(k) and not k.startswith(ignore) and not added_with_default(k))
