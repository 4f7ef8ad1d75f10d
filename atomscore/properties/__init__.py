"""Target properties of the FIM modules (elastic constants), imported on first use."""

__all__ = ["ElasticConstants"]


def __getattr__(name):
    if name == "ElasticConstants":
        from atomscore.properties.elastic import ElasticConstants

        return ElasticConstants
    raise AttributeError(f"module 'atomscore.properties' has no attribute {name!r}")
