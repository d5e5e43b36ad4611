"""Trust zones, encryption, signatures, broker ACLs and audit (not yet built)."""

__all__: list[str] = []
