"""docs/security.md lists every RPC with the roles, account field and audit of its row in
the one RPC table, so the operator's page cannot drift from what the gateway enforces."""

from __future__ import annotations

from pathlib import Path

from cluster.backend.rpcs import RPCS, Rpc
from cluster.security.roles import Role

DOC = Path(__file__).resolve().parent.parent / "docs" / "security.md"


def doc_line(rpc: Rpc) -> str:
    """The line of the RPC → roles table for ``rpc``, as docs/security.md writes it."""
    roles = ", ".join(role.value for role in Role if role in rpc.roles)
    account = f"`{rpc.account}`" if rpc.account else "-"
    return f"| `{rpc.name}` | {roles} | {account} | {'yes' if rpc.audited else '-'} |"


def test_the_roles_table_of_the_docs_is_the_rpc_table() -> None:
    """Every RPC has its line, in table order, and the table has no other line."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    documented = [line for line in lines if line.startswith("| `") and "Service." in line]
    wanted = [doc_line(rpc) for rpc in RPCS]
    assert documented == wanted, "docs/security.md, RPC → roles, should read:\n" + "\n".join(wanted)
