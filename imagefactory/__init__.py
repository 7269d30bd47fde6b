"""imagefactory: a validated GPU image matrix rendered into gated Docker images.

The planning API other layers use: `load_matrix`, `resolve_target`, `select_targets`, `render_target`,
`immutable_tag`, and the `Target` / `Matrix` types.
"""

from imagefactory.errors import ConfigError, ImageFactoryError, RefusedTargetError, UnknownTargetError
from imagefactory.plan.expand import all_targets, expand, resolve_target, select_targets
from imagefactory.plan.matrix import load_matrix
from imagefactory.plan.model import Matrix, Target, immutable_tag
from imagefactory.plan.render import render_target

__all__ = [
    "ConfigError",
    "ImageFactoryError",
    "Matrix",
    "RefusedTargetError",
    "Target",
    "UnknownTargetError",
    "all_targets",
    "expand",
    "immutable_tag",
    "load_matrix",
    "render_target",
    "resolve_target",
    "select_targets",
]
