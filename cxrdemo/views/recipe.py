"""The Trainer's recipe across reloads: in the URL, from this browser's last submission, put back into the form.

A page forgets its widgets when another page is shown and a reload forgets the session; the recipe survives both
in the address (?epochs=...) and, for a new session, in this browser's newest run.
"""

from __future__ import annotations

from typing import Any

from cxrdemo.config import TrainConfig, option_fields
from cxrdemo.errors import ConfigError
from cxrdemo.paths import is_builtin_data
from cxrdemo.runs import store as runs
from cxrdemo.views import trainer_form as form
from cxrdemo.views.host_paths import Roots, host_folder, shown_folder

KEPT_QUERY = ("sid", "teacher")  # address parameters that are not the recipe (the classroom's browser id, the
# teacher's signed unlock) and stay


def recipe_to_query(recipe: dict[str, Any]) -> dict[str, str]:
    """The recipe's settings that differ from the defaults, as URL query parameters."""
    defaults = TrainConfig().to_dict()
    return {k: str(v) for k, v in recipe.items() if k in defaults and str(v) != str(defaults[k]) and v != ""}


def recipe_from_query(params: dict[str, str]) -> dict[str, Any]:
    """The settings a URL carries, each cast and checked alone; a value that does not fit is left out."""
    types = {f.name: f.type for f in option_fields()}
    choices = {f.name: f.metadata["choices"] for f in option_fields()}
    specs = {s.name: s for s in form.widget_specs()}
    out: dict[str, Any] = {}
    for key, text in params.items():
        if key not in types or key == "extra":
            continue
        try:
            value = form.CASTS.get(types[key], str)(text)
            TrainConfig(**{key: value})  # validates this one value
        except (ConfigError, TypeError, ValueError):
            continue
        spec = specs.get(key)
        if choices[key] and value not in choices[key]:
            continue
        if spec and spec.kind == "number" and not (spec.min is None or spec.min <= value <= spec.max):
            continue  # outside what the form's field accepts
        out[key] = value
    return out


def last_recipe(infos: list[runs.RunInfo], browser: str) -> dict[str, Any]:
    """The recipe of the newest run this browser submitted (by its hashed id), as recipe_from_query reads it.

    Never another browser's run: in a classroom the store's newest run is usually someone else's."""
    mine = [i for i in infos if browser and i.meta.get("browser") == browser and not i.damaged and i.config]
    if not mine:
        return {}
    newest = max(mine, key=lambda i: (float(i.meta.get("created") or 0), i.run_id))
    return recipe_from_query(recipe_to_query(newest.config))


def restored_recipe(query: dict[str, str], infos: list[runs.RunInfo], browser: str, folder_choice: str,
                    roots: Roots = None) -> dict:
    """The widget values a new session starts from: the recipe in the URL, else this browser's last submission.

    A dataset other than the built-in one selects `folder_choice` with the path typed in (in a classroom, the URL
    names it inside the `roots`, and an allowed root is chosen as itself); a decision rule that arrives with the
    recipe counts as the user's own pick (a run it starts from does not override it)."""
    values = recipe_from_query(query)
    if values.get("data", "demo") != "demo" and not is_builtin_data(values["data"]):
        folder = host_folder(values["data"], roots)
        values = {k: v for k, v in values.items() if k != "data"} | ({"data": folder} if folder else {})
    values = values or last_recipe(infos, browser)
    if values.get("data", "demo") != "demo":
        own = roots is not None and values["data"] in map(str, roots)
        values.update(source=values["data"] if own else folder_choice, data_path=values["data"])
    if "threshold" in values:
        values["picked:threshold"] = True
    return values


def query_for(recipe: dict[str, Any], query: dict[str, str], roots: Roots = None) -> dict[str, str]:
    """The page's new address parameters: the recipe's, plus the kept ones of the current address; a classroom's
    (`roots`) names the data folder inside them, never by its path on the server."""
    shown = {**recipe, "data": shown_folder(recipe["data"], roots)} if recipe.get("data") else recipe
    return {**{k: v for k, v in query.items() if k in KEPT_QUERY}, **recipe_to_query(shown)}


def rule_choices(declared: tuple | list, inherited: str | None, kept: object | None) -> list[str]:
    """The decision rules to offer: the declared ones, the source run's, and the one this session had chosen."""
    return list(dict.fromkeys([*declared, *([inherited] if inherited else []),
                               *([str(kept)] if kept is not None else [])]))
