"""Turning validated inputs into records: defaults, limits, dense and sparse vectors.

Validation of a whole batch happens before any embedding, so a bad item fails the batch before
anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import structlog
from pydantic import TypeAdapter, ValidationError

from hivemem.agents.inputs import MemoryInput
from hivemem.agents.tiers import initial_tier
from hivemem.pool.enums import Zone
from hivemem.pool.errors import InvalidContent, InvalidInput
from hivemem.pool.ids import new_record_id
from hivemem.pool.ports import Embedder, SparseEncoder, Vector
from hivemem.pool.records import MemoryRecord, Metadata, MetadataValue, Scope
from hivemem.pool.settings import MemorySettings
from hivemem.security.classifier import Classifier, record_text

log = structlog.get_logger(__name__)

#: Checks a record's metadata as MemoryRecord does.
_METADATA: TypeAdapter[dict[str, MetadataValue]] = TypeAdapter(Metadata)

#: The metadata key naming the sensitive-content detectors that fired on a record.
SENSITIVE_KEY = "sensitive"


class RecordBuilder:
    """Builds records for one memory; stateless apart from its collaborators."""

    def __init__(
        self,
        embedder: Embedder,
        sparse: SparseEncoder,
        settings: MemorySettings,
        classifier: Classifier | None = None,
        gate: Callable[[Zone, Sequence[str]], None] | None = None,
    ) -> None:
        """``gate(zone, compartments)`` raises for a zone (or compartments) the records may not
        be written in."""
        self._embedder = embedder
        self._sparse = sparse
        self._settings = settings
        self._classifier = classifier
        self._gate = gate

    def validate(
        self, inputs: Sequence[MemoryInput], scope: Scope | None, now: datetime
    ) -> list[MemoryRecord]:
        """Records without vectors, or InvalidInput naming the first bad item. The inputs were
        validated field by field already, so records are assembled without a second pass.
        With a classifier, sensitive content lifts a record's zone to the policy's minimum and
        the detectors that fired are kept in ``metadata["sensitive"]`` (never the text)."""
        records = []
        limit = self._settings.max_content_chars
        for position, item in enumerate(inputs):
            if len(item.content) > limit:
                raise InvalidContent(
                    f"item {position}: content has {len(item.content)} characters, limit {limit}",
                    field="content",
                )
            item_scope = item.scope or scope
            if item_scope is None:
                raise InvalidInput(f"item {position} has no scope", field="scope")
            valid_from = item.valid_from or now
            if item.valid_until is not None and item.valid_until < valid_from:
                raise InvalidInput(
                    f"item {position}: valid_until precedes valid_from", field="valid_until"
                )
            zone, metadata = self._classified(item, position)
            if self._gate is not None:
                self._gate(zone, item.compartments)
            records.append(
                MemoryRecord.model_construct(
                    id=new_record_id(),
                    content=item.content,
                    scope=item_scope,
                    level=item.level,
                    category=item.category,
                    tier=item.tier or initial_tier(item.importance, self._settings.tiers),
                    zone=zone,
                    compartments=item.compartments,
                    importance=item.importance,
                    tags=item.tags,
                    entities=item.entities,
                    metadata=metadata,
                    sources=item.sources,
                    valid_from=valid_from,
                    valid_until=item.valid_until,
                    recorded_at=now,
                    # Every field is given: model_construct's default factories are slow
                    # (pydantic inspects each factory's signature on every call).
                    consolidated_into=[],
                    vector=None,
                    sparse=None,
                    access_count=0,
                    last_accessed_at=None,
                    follows=None,
                    superseded_at=None,
                    supersedes=None,
                    superseded_by=None,
                )
            )
        return records

    def _classified(
        self, item: MemoryInput, position: int
    ) -> tuple[Zone, dict[str, MetadataValue]]:
        """The zone and metadata of ``item`` once classified: the detectors that fired are
        recorded under ``sensitive``. InvalidInput when the metadata has no room for them (at
        the most keys or text a record holds): the record could not be stored, exported or
        sent as it would be."""
        if self._classifier is None:
            return item.zone, item.metadata
        metadata = {k: v for k, v in item.metadata.items() if k != SENSITIVE_KEY}
        text = record_text(item.content, item.tags, item.entities, metadata)
        found = self._classifier.assess(text, item.zone)
        if not found.detectors:
            return item.zone, item.metadata
        if found.lifted:
            log.info("record_zone_lifted", asked=item.zone.value, zone=found.zone.value,
                     detectors=found.detectors)  # fmt: skip
        detectors: list[str | int | float | bool] = list(found.detectors)
        marked: dict[str, MetadataValue] = {**item.metadata, SENSITIVE_KEY: detectors}
        try:
            _METADATA.validate_python(marked)
        except (ValidationError, InvalidInput):
            raise InvalidInput(
                f"item {position}: sensitive content was found, and its metadata has no room "
                f"for the {SENSITIVE_KEY!r} key that records it: give it fewer keys or less text",
                field="metadata",
            ) from None
        return found.zone, marked

    def embed(self, records: Sequence[MemoryRecord]) -> tuple[list[MemoryRecord], Vector]:
        """The records with their sparse vectors, and their dense vectors as one float32 matrix
        (row i for record i; kept out of the records so that no list of Python floats is built)."""
        texts = [r.content for r in records]
        dense = self._embedder.embed_documents(texts)
        sparse = self._sparse.encode_documents(texts)
        with_terms = [
            r.model_copy(update={"sparse": t}) for r, t in zip(records, sparse, strict=True)
        ]
        return with_terms, dense
