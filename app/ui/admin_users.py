"""Admin view, users: add, disable or enable, reset a password, change a role."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from app.auth import generate_password, hash_password
from app.ui.common import DIRECT, html
from app.ui.guard import AppContext, require_user
from app.ui.render import escape
from storage import crud
from storage.db import transaction
from storage.models import Role

COLUMNS = ["id", "name", "role", "active", "created"]


def users_table(ctx: AppContext) -> pd.DataFrame:
    with transaction(ctx.rt.engine, readonly=True) as session:
        users = crud.list_users(session=session)
    rows = [
        [u.id, u.name, str(u.role), "yes" if u.active else "no", u.created_at.strftime("%Y-%m-%d")]
        for u in users
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def _ok(text: str) -> str:
    return f'<span class="pf-ok">{escape(text)}</span>'


def _error(text: str) -> str:
    return f'<span class="pf-error" role="alert">{escape(text)}</span>'


def _find(session, name: str):
    user = crud.get_user_by_name(session=session, name=(name or "").strip())
    if user is None:
        raise crud.NotFound(f"no user {name!r}")
    return user


def _keeps_an_admin(session, user, *, role: Role | None = None, active: bool | None = None):
    """Refuse a change that would leave no active admin."""
    stays_admin = (role or user.role) == Role.admin and (user.active if active is None else active)
    was_admin = user.role == Role.admin and user.active
    if was_admin and not stays_admin and crud.count_admins(session=session) <= 1:
        raise crud.Conflict(f"{user.name!r} is the last active admin")


def build_users(ctx: AppContext):
    """Components and events of the users tab; returns (refresh function, its outputs)."""

    def refresh(request: gr.Request):
        require_user(ctx, request, role=Role.admin)
        return users_table(ctx)

    def add(name: str, role: str, request: gr.Request):
        admin = require_user(ctx, request, role=Role.admin)
        password = generate_password()
        try:
            with transaction(ctx.rt.engine) as session:
                user = crud.create_user(
                    session=session,
                    name=name or "",
                    role=Role(role),
                    password_hash=hash_password(password),
                )
                crud.record_audit(
                    session=session,
                    user_id=admin.id,
                    action="user.add",
                    detail={"name": user.name, "role": str(user.role)},
                )
        except (crud.Conflict, ValueError) as exc:
            return _error(str(exc)), users_table(ctx)
        note = f"Added {user.role} {user.name!r}. Password (shown once): {password}"
        return _ok(note), users_table(ctx)

    def change(name: str, action: str, role: str, request: gr.Request):
        admin = require_user(ctx, request, role=Role.admin)
        password = None
        try:
            with transaction(ctx.rt.engine) as session:
                user = _find(session, name)
                if action == "disable":
                    if user.id == admin.id:
                        raise crud.Conflict("you cannot disable yourself")
                    _keeps_an_admin(session, user, active=False)
                    crud.update_user(session=session, user_id=user.id, active=False)
                elif action == "enable":
                    crud.update_user(session=session, user_id=user.id, active=True)
                elif action == "reset password":
                    password = generate_password()
                    crud.update_user(
                        session=session, user_id=user.id, password_hash=hash_password(password)
                    )
                elif action == "set role":
                    _keeps_an_admin(session, user, role=Role(role))
                    crud.update_user(session=session, user_id=user.id, role=Role(role))
                else:
                    raise ValueError(f"unknown action {action!r}")
                crud.record_audit(
                    session=session,
                    user_id=admin.id,
                    action=f"user.{action.replace(' ', '_')}",
                    detail={"name": user.name, "role": role if action == "set role" else None},
                )
        except (crud.Conflict, crud.NotFound, ValueError) as exc:
            return _error(str(exc)), users_table(ctx)
        done = f"{user.name}: {action}" + (f" to {role}" if action == "set role" else "") + " done."
        if password:
            done += f" New password (shown once): {password}"
        return _ok(done), users_table(ctx)

    table = gr.Dataframe(users_table_empty(), label="Users", interactive=False, elem_id="pf-users")
    with gr.Row():
        with gr.Column():
            gr.Markdown("**Add a user** (a password is generated and shown once)")
            new_name = gr.Textbox(label="Name", elem_id="pf-new-user")
            new_role = gr.Radio([r.value for r in Role], value="annotator", label="Role")
            add_button = gr.Button("Add user", elem_id="pf-add-user")
        with gr.Column():
            gr.Markdown("**Change a user**")
            target = gr.Textbox(label="Name", elem_id="pf-target-user")
            action = gr.Radio(
                ["disable", "enable", "reset password", "set role"], value="disable", label="Action"
            )
            role = gr.Radio([r.value for r in Role], value="annotator", label="Role (for set role)")
            change_button = gr.Button("Apply", elem_id="pf-change-user")
    result = html(elem_id="pf-users-result")
    add_button.click(add, [new_name, new_role], [result, table], api_name="user_add", **DIRECT)
    change_button.click(
        change, [target, action, role], [result, table], api_name="user_change", **DIRECT
    )
    return refresh, [table]


def users_table_empty() -> pd.DataFrame:
    return pd.DataFrame([], columns=COLUMNS)
