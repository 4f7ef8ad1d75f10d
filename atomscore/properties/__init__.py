"""Target properties of the FIM modules, imported on first use.

Each class is built from ``target_property_args`` and named by ``target_property_type``
(its class name); :func:`target_property_from_spec` builds any of them.
"""

#: target_property_type -> module that defines the class of that name
TARGET_PROPERTY_MODULES = {
    "ElasticConstants": "atomscore.properties.elastic",
    "LatticeConstant": "atomscore.properties.crystal",
    "CohesiveEnergy": "atomscore.properties.crystal",
    "BulkModulus": "atomscore.properties.crystal",
    "CrystalElasticConstants": "atomscore.properties.crystal",
    "VacancyFormationEnergy": "atomscore.properties.vacancy",
    "VacancyMigrationEnergy": "atomscore.properties.vacancy",
    "SurfaceEnergy": "atomscore.properties.surface",
}

__all__ = [*TARGET_PROPERTY_MODULES, "target_property_from_spec"]


def target_property_class(name):
    """The class of the target property type ``name``."""
    import importlib

    from atomscore.errors import InputError

    if name not in TARGET_PROPERTY_MODULES:
        raise InputError(f"target_property_type: unknown target property {name!r}; expected one of: "
                         f"{', '.join(map(repr, TARGET_PROPERTY_MODULES))}")
    return getattr(importlib.import_module(TARGET_PROPERTY_MODULES[name]), name)


def target_property_from_spec(spec):
    """Build a target property from ``{'target_property_type': ..., 'target_property_args': {...}}``
    (or the FIM module's list entry with ``'init_args'``, or an instance, returned as is)."""
    from atomscore.errors import InputError

    if hasattr(spec, "property_vector") and hasattr(spec, "to_spec"):
        return spec
    init = spec.get("init_args", spec) if isinstance(spec, dict) else spec
    if not isinstance(init, dict):
        raise InputError(f"target property: expected a dict with 'target_property_type' and "
                         f"'target_property_args', got {type(spec).__name__}")
    return target_property_class(init.get("target_property_type")).from_spec(init)


def __getattr__(name):
    if name in TARGET_PROPERTY_MODULES:
        return target_property_class(name)
    raise AttributeError(f"module 'atomscore.properties' has no attribute {name!r}")
