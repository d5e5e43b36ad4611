"""Trust zones, encryption, signatures, broker ACLs and audit.

The audit log: :class:`AuditLog` (Redis-backed, with a JSONL copy), its entries
(:class:`AuditEntry`, :class:`AuditEvent`) and their verification (:func:`verify`,
:func:`verify_file`, :class:`VerifyReport`).
"""

from hivemem.security.audit import AuditLog, verify_file
from hivemem.security.audit_chain import Problem, ProblemKind, VerifyReport, verify
from hivemem.security.audit_entry import GENESIS, Anchor, AuditEntry, AuditEvent

__all__ = [
    "GENESIS",
    "Anchor",
    "AuditEntry",
    "AuditEvent",
    "AuditLog",
    "Problem",
    "ProblemKind",
    "VerifyReport",
    "verify",
    "verify_file",
]
