"""The record every preprocessing stage reads and writes, and the contract of a filter.

A filter is a plain function `Document -> Document | Drop`: it returns the document (possibly with
text or metadata changed) to keep it, or `Drop(reason)` to remove it. The Beam pipeline counts
every drop by its reason.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, NamedTuple


@dataclasses.dataclass
class Document:
  id: str
  source: str
  text: str
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), ensure_ascii=False)

  @classmethod
  def from_json(cls, line: str, where: str = "input") -> Document:
    """Parses one JSONL line; `where` (file:line) names the place in errors."""
    try:
      record = json.loads(line)
    except json.JSONDecodeError as error:
      raise ValueError(f"{where}: not valid JSON ({error})") from None
    missing = [k for k in ("id", "source", "text") if k not in record]
    if missing:
      raise ValueError(f"{where}: document record lacks fields {missing}")
    return cls(id=str(record["id"]), source=record["source"], text=record["text"],
               metadata=record.get("metadata") or {})


class Drop(NamedTuple):
  """Why a filter removed a document; `reason` is a short snake_case name counted in stats."""

  reason: str


Filter = Callable[[Document], "Document | Drop"]
