"""What a study may search (`tune.space`): each key a setting a trial can change, each value making valid params."""

from __future__ import annotations

from kerasflow.config import ConfigError, Params, parse_params
from kerasflow.overrides import apply_overrides

# Settings that change the raw data, the splits or the input layers' constants fitted beside them: fixed for a
# study (its data stages run once).
STUDY_DATA_KEYS = ("ingest.", "validate.", "preprocess.")


def check_search_space(params: Params) -> None:
    """Each key of `tune.space` must be a param a trial can set: applied with a value from its range, the params
    must still be valid. Raise ConfigError naming the key."""
    tree = params.to_dict()
    if not params.tune.space:
        raise ConfigError("tune.space is empty: give at least one key to search, e.g. model.optimizer.learning_rate")
    for key, dimension in params.tune.space.items():
        if key.split(".")[0] in ("tune", "tracking", "predict"):
            raise ConfigError(f"tune.space: {key!r} is not a setting of a trial")
        if key == "seed" or key.startswith(STUDY_DATA_KEYS):
            raise ConfigError(
                f"tune.space: {key!r} changes the data splits or the input layers fitted with them, which a "
                "study makes once for all its trials; search model or train settings"
            )
        values = dimension.choice if dimension.choice is not None else list(getattr(dimension, dimension.kind))
        for value in values:  # every choice, and both ends of a range, must make valid params
            try:
                parse_params(apply_overrides(tree, {key: value}), f"tune.space.{key}")
            except ConfigError as error:
                message = str(error).replace("override ", "")
                raise ConfigError(
                    f"tune.space: {key!r} = {value!r} is not a param a trial can set ({message})"
                ) from None
