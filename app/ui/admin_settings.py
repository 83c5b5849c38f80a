"""Admin view, settings: the run-time editable keys, validated as a whole before anything is
stored; an error names the key."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import gradio as gr

from app.ui.common import DIRECT, html
from app.ui.guard import AppContext, require_user
from app.ui.render import escape
from storage import crud
from storage.db import transaction
from storage.models import Role
from storage.settings import EDITABLE_KEYS, Settings, SettingsError, with_overrides


@dataclass(frozen=True)
class Field:
    key: str
    kind: str  # choice | bool | int | float | optional_float | float_list | text_list | text
    # | optional_text
    choices: tuple[str, ...] = ()
    help: str = ""


def _field(key: str) -> Field:
    section, name = key.split(".")
    info = Settings.model_fields[section].annotation.model_fields[name]
    annotation = info.annotation
    args = typing.get_args(annotation)
    help_text = info.description or ""
    if typing.get_origin(annotation) is Literal:
        return Field(key, "choice", tuple(str(a) for a in args), help_text)
    if annotation is bool:
        return Field(key, "bool", help=help_text)
    if annotation is int:
        return Field(key, "int", help=help_text)
    if annotation is float:
        return Field(key, "float", help=help_text)
    if isinstance(annotation, types.UnionType) and type(None) in args:
        optional = "optional_float" if float in args else "optional_text"
        return Field(key, optional, help=help_text)
    if typing.get_origin(annotation) is list:
        kind = "float_list" if args == (float,) else "text_list"
        return Field(key, kind, help=help_text)
    return Field(key, "text", help=help_text)


FIELDS = tuple(_field(key) for key in EDITABLE_KEYS)


def _current(settings: Settings, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(settings, section), name)


def to_widget(field: Field, value: Any) -> Any:
    if field.kind == "float_list":
        return ", ".join(f"{v:g}" for v in value)
    if field.kind == "text_list":
        return ", ".join(value)
    if field.kind == "optional_float":
        return "" if value is None else f"{value:g}"
    if field.kind == "optional_text":
        return "" if value is None else value
    return value


def parse(field: Field, raw: Any) -> Any:
    """The widget's value as the setting's type; ValueError names the key."""
    try:
        if field.kind == "float_list":
            return [float(part) for part in str(raw).replace(";", ",").split(",") if part.strip()]
        if field.kind == "text_list":
            return [part.strip() for part in str(raw or "").split(",") if part.strip()]
        if field.kind == "optional_float":
            return None if str(raw).strip() == "" else float(raw)
        if field.kind == "optional_text":
            return str(raw or "").strip() or None
        if field.kind == "int":
            if raw is None or float(raw) != int(float(raw)):
                raise ValueError("expected a whole number")
            return int(float(raw))
        if field.kind == "float":
            if raw is None:
                raise ValueError("expected a number")
            return float(raw)
        return raw
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field.key}: {exc} (got {raw!r})") from None


def _widget(field: Field, value: Any):
    label, info = field.key, field.help or None
    if field.kind == "choice":
        return gr.Dropdown(list(field.choices), value=value, label=label, info=info)
    if field.kind == "bool":
        return gr.Checkbox(value=value, label=label, info=info)
    if field.kind in ("int", "float"):
        return gr.Number(
            value=value, label=label, info=info, precision=0 if field.kind == "int" else None
        )
    return gr.Textbox(value=to_widget(field, value), label=label, info=info)


def build_settings(ctx: AppContext):
    """Components and events of the settings tab; returns (refresh function, its outputs)."""

    def refresh(request: gr.Request):
        require_user(ctx, request, role=Role.admin)
        settings = ctx.rt.effective_settings()
        loaded = {f.key: _current(settings, f.key) for f in FIELDS}
        widget_values = [to_widget(f, loaded[f.key]) for f in FIELDS]
        marker = '<span class="pf-settings-loaded"></span>'
        return [*widget_values, json.dumps(loaded, default=str), marker]

    def save(values: dict, request: gr.Request):
        from labeling.iteration import reply_budget_error

        admin = require_user(ctx, request, role=Role.admin)
        current = ctx.rt.effective_settings()
        try:
            parsed = {f.key: parse(f, values[w]) for f, w in zip(FIELDS, widgets, strict=True)}
            # Only what the admin edited since the form loaded: a key changed elsewhere
            # meanwhile (labeling paused on the loop tab) keeps its new value.
            loaded = json.loads(values[loaded_box] or "null") or {}
            edited = {k: v for k, v in parsed.items() if k not in loaded or not _same(v, loaded[k])}
            changes = {k: v for k, v in edited.items() if not _same(v, _current(current, k))}
            if not changes:
                return '<span class="pf-ok">Nothing changed.</span>'
            with transaction(ctx.rt.engine) as session:
                stored = crud.get_overrides(session=session)
                # raises, naming the key
                changed = with_overrides(ctx.rt.settings, {**stored, **changes})
                deployed = crud.deployed_policy(session=session)
                budget_changed = "generation.max_new_tokens" in changes
                if budget_changed and (problem := reply_budget_error(deployed, changed)):
                    raise SettingsError(problem)
                crud.set_overrides(session=session, values=changes, user_id=admin.id)
                crud.record_audit(
                    session=session, user_id=admin.id, action="settings.change", detail=changes
                )
        except (SettingsError, ValueError) as exc:
            return f'<pre class="pf-error" role="alert">{escape(exc)}</pre>'
        listed = ", ".join(f"{k} = {v!r}" for k, v in changes.items())
        return f'<span class="pf-ok">Saved: {escape(listed)}</span>'

    defaults = ctx.rt.settings
    widgets = []
    sections: dict[str, list[Field]] = {}
    for field in FIELDS:
        sections.setdefault(field.key.split(".")[0], []).append(field)
    for section, fields in sections.items():
        with gr.Accordion(section, open=True), gr.Row():
            for field in fields:
                widgets.append(_widget(field, _current(defaults, field.key)))
    save_button = gr.Button("Save settings", variant="primary", elem_id="pf-save-settings")
    result = html(elem_id="pf-settings-result")
    loaded_box = gr.Textbox(visible=False)  # the values the form was loaded with, as JSON
    # A set of inputs: the handler gets one {component: value} dict.
    save_button.click(save, {*widgets, loaded_box}, [result], api_name="settings_save", **DIRECT)
    return refresh, [*widgets, loaded_box, result]


def _same(a: Any, b: Any) -> bool:
    """Equal as settings values (a tuple and a list of the same numbers are the same)."""
    return json.dumps(a, default=str) == json.dumps(b, default=str)
