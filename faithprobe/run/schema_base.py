"""The building blocks of the run config schema (:mod:`faithprobe.run.schema`): the strict base
section, the validators of registry names and scalars, the one-line error, the bounds shared by
several sections, and reading a field's bounds back (for ``LIMITS`` and the README table)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

from faithprobe.edits.cues import CUES
from faithprobe.edits.interventions import CORRUPTERS, INTERVENTIONS, PARAPHRASERS
from faithprobe.judges import JUDGES
from faithprobe.registry import Registry

__all__ = ["MAX_LABEL_CHARS", "MAX_SEED", "MAX_STRING_CHARS", "REGISTRIES", "Scalar", "Section",
           "Text", "bounds_of", "config_error", "registered", "seed_field"]

MAX_SEED = 2**32 - 1  # what numpy accepts
MAX_STRING_CHARS = 200_000  # any string value of a config
MAX_LABEL_CHARS = 64  # a checkpoint label (it names files in the run folder)

Text = Annotated[str, StringConstraints(max_length=MAX_STRING_CHARS)]


def config_error(message: str) -> PydanticCustomError:
    """A validation error whose message is ``message`` as it stands (the key path is added)."""
    return PydanticCustomError("config", "{message}", {"message": message})


def _scalar(value: Any) -> Any:
    if not isinstance(value, (str, int, float, bool)) or value != value:  # NaN != NaN
        raise config_error("expected a string, number or boolean")
    return value


Scalar = Annotated[Any, AfterValidator(_scalar)]


def registered(registry: Registry[Any], *, also: tuple[str, ...] = ()) -> Callable[[str], str]:
    """A validator of a name ``registry`` holds (read when a config is validated, so a plugin
    registered before that can be named), or one of ``also``."""
    def check(name: str) -> str:
        if name not in registry and name not in also:
            known = ", ".join([*also, *registry.names()])
            raise config_error(f"unknown {registry.kind} {name!r} (known: {known})")
        return name

    check.registry = registry  # type: ignore[attr-defined]  # read by the README table
    return check


# the registries a config names, by kind (a field's json_schema_extra "choices" names one)
REGISTRIES: dict[str, Registry[Any]] = {r.kind: r for r in (
    INTERVENTIONS, CORRUPTERS, PARAPHRASERS, CUES, JUDGES)}


class Section(BaseModel):
    """A table of a run config: unknown keys refused, types strict."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    # the validated config holds this table's defaults (False: only the keys given; the
    # defaults apply when it is read, as a custom cue kind's do)
    stores_defaults: ClassVar[bool] = True


def seed_field(default: int, description: str) -> Any:
    return Field(default, ge=0, le=MAX_SEED, description=description)


def bounds_of(info: Any) -> tuple[float, float] | None:
    """A field's (lowest, highest) allowed value, where it has both."""
    low = next((m.ge for m in info.metadata if hasattr(m, "ge")), None)
    high = next((m.le for m in info.metadata if hasattr(m, "le")), None)
    return None if low is None or high is None else (low, high)

