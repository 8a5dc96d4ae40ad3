"""The experiment schema (workflow/schemas/config.schema.yaml) and its defaults: the one place they are read."""

from __future__ import annotations

import copy

import jsonschema
import yaml

from attnbench.paths import PACKAGE_DIR

# attnbench/schemas links to workflow/schemas in a checkout and is a copy (package data) in an installed package.
SCHEMA_PATH = PACKAGE_DIR / "schemas" / "config.schema.yaml"


def load_schema() -> dict:
    with SCHEMA_PATH.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def with_defaults(validator_class):
    """A validator that writes each property's schema default into the instance before validating it, so nested
    objects get their defaults too (the recipe from the jsonschema FAQ, with copies of mutable defaults)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def fill_defaults(section: str, value: dict) -> dict:
    """value (a section's content, e.g. {} for "sweep") with the schema's defaults of that top-level section filled
    in place; the one way code outside the workflow gets a default."""
    schema = load_schema()
    subschema = {**schema["properties"][section], "$defs": schema["$defs"]}
    for _ in with_defaults(jsonschema.Draft202012Validator)(subschema).iter_errors(value):
        pass  # the walk fills the defaults; the caller's values were validated elsewhere (or are its own)
    return value
