"""Scope visibility: which records a query made in a scope may see.

A query scope names a user and optionally a session, an agent and a run. With inheritance (the
default) a record is visible when it belongs to that user and, for each of session, agent and
run that the query names, the record either has the same id or none (it is broader). Dimensions
the query leaves out are not constrained. So a query in (user U, session S, agent A) sees U's
user-level memories, S's session-level memories and A's; it never sees session S2's. Records
that other agents shared with this one (``received_from`` set) pass the agent dimension: they
were delivered to be found; user, session and run still apply.

With ``exact=True`` the record's scope must equal the query scope, unnamed dimensions included.

The user id is always an equality condition: users are a hard partition.
"""

from __future__ import annotations

from typing import Any

from hivemem.pool.errors import InvalidInput
from hivemem.pool.filters import Cond, Expr, Or
from hivemem.pool.records import Scope

_NARROWING = ("session_id", "agent_id", "run_id")


def scope_conditions(scope: Scope, *, exact: bool = False) -> list[Expr]:
    """Conditions (to be AND-ed) that select the records visible from ``scope``."""
    conditions: list[Expr] = [Cond(field="scope.user_id", op="eq", value=scope.user_id)]
    for name in _NARROWING:
        value = getattr(scope, name)
        field = f"scope.{name}"
        if exact:
            conditions.append(Cond(field=field, op="eq", value=value))
        elif value is not None:
            either: list[Expr] = [
                Cond(field=field, op="eq", value=value),
                Cond(field=field, op="eq", value=None),
            ]
            if name == "agent_id":
                either.append(Cond(field="received_from", op="ne", value=None))
            conditions.append(Or(any=either))
    return conditions


def owned_by(scope: Scope) -> list[Expr]:
    """Conditions selecting every record *inside* ``scope``: same user, and the same id for each
    dimension ``scope`` names (used by forget: forgetting a session removes its records only)."""
    conditions: list[Expr] = [Cond(field="scope.user_id", op="eq", value=scope.user_id)]
    for name in _NARROWING:
        value = getattr(scope, name)
        if value is not None:
            conditions.append(Cond(field=f"scope.{name}", op="eq", value=value))
    return conditions


def optional_scope(
    scope: Scope | dict[str, Any] | None,
    user_id: str | None,
    session_id: str | None = None,
    agent_id: str | None = None,
    run_id: str | None = None,
) -> Scope | None:
    """:func:`resolve_scope` when a scope or any id is given, else None. Ids that narrow a
    scope given without its user raise InvalidInput (they would otherwise be ignored)."""
    if scope is None and all(v is None for v in (user_id, session_id, agent_id, run_id)):
        return None
    return resolve_scope(scope, user_id, session_id, agent_id, run_id)


def resolve_scope(
    scope: Scope | dict[str, Any] | None,
    user_id: str | None,
    session_id: str | None = None,
    agent_id: str | None = None,
    run_id: str | None = None,
) -> Scope:
    """A scope given either whole (``scope=``) or by its ids; raises InvalidInput otherwise."""
    ids_given = any(v is not None for v in (user_id, session_id, agent_id, run_id))
    if scope is not None:
        if ids_given:
            raise InvalidInput("give either scope= or the ids, not both", field="scope")
        return scope if isinstance(scope, Scope) else Scope.model_validate(scope)
    if user_id is None:
        raise InvalidInput("a scope needs a user_id", field="user_id")
    return Scope(user_id=user_id, session_id=session_id, agent_id=agent_id, run_id=run_id)
