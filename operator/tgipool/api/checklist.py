"""The status model of a pool's pre-production checklist (`status.checklist`, condition `ProductionReady`).

The items are computed in `tgipool.checklist` (pure); `tgipool check` prints exactly this list.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

PRODUCTION_READY = "ProductionReady"


class ChecklistItem(BaseModel):
    """One item of the reference page's checklist before production, checked against the cluster."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")
    item: str = Field(description="What the page asks for, e.g. 'SLO set'.")
    ok: bool = Field(description="True when the cluster shows it; False when missing or not verifiable.")
    detail: str = Field(default="", description="The evidence, or what to set.")
