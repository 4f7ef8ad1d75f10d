"""Target properties of the FIM modules (elastic constants, OpenKIM tests, the built-in
crystal, defect and surface properties of docs/properties.md), imported on first use."""

#: target_property_type -> "module:class"
TARGET_PROPERTIES = {"ElasticConstants": "atomscore.properties.elastic:ElasticConstants",
                     "KIMRun": "atomscore.properties.kimrun:KIMRun",
                     "LatticeConstant": "atomscore.properties.crystal:LatticeConstant",
                     "CohesiveEnergy": "atomscore.properties.crystal:CohesiveEnergy",
                     "BulkModulus": "atomscore.properties.crystal:BulkModulus",
                     "CrystalElasticConstants": "atomscore.properties.crystal:CrystalElasticConstants",
                     "VacancyFormationEnergy": "atomscore.properties.vacancy:VacancyFormationEnergy",
                     "VacancyMigrationEnergy": "atomscore.properties.vacancy:VacancyMigrationEnergy",
                     "SurfaceEnergy": "atomscore.properties.surface:SurfaceEnergy"}

__all__ = [*TARGET_PROPERTIES, "from_spec"]

# the spec form lives in the lowest module (no other properties module imported); kept here too
from atomscore.properties.common import build_from_spec, spec_of  # noqa: E402,F401


def _class(name):
    import importlib

    module, cls = TARGET_PROPERTIES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def from_spec(spec, calculate_property_args=None):
    """The target property of ``{'target_property_type': ..., 'target_property_args': {...}}``.

    ``calculate_property_args`` (the FIM module's per-property dict) is passed to the types
    that take picks from it (``KIMRun``'s ``get_test_result_args``).
    """
    from atomscore.errors import InputError

    if isinstance(spec, dict) and "init_args" in spec:
        calculate_property_args = spec.get("calculate_property_args") or calculate_property_args
        spec = spec["init_args"]
    ptype = spec.get("target_property_type") if isinstance(spec, dict) else getattr(spec, "target_property_type", None)
    if ptype not in TARGET_PROPERTIES:
        raise InputError(f"target_property_type: unknown target property {ptype!r}; expected one of: "
                         f"{', '.join(map(repr, TARGET_PROPERTIES))}")
    cls = _class(ptype)
    if ptype == "KIMRun":
        return cls.from_spec(spec, calculate_property_args)
    return cls.from_spec(spec)


def __getattr__(name):
    if name in TARGET_PROPERTIES:
        return _class(name)
    raise AttributeError(f"module 'atomscore.properties' has no attribute {name!r}")
