"""The model repository format: the documented, versioned contract between training and server,
and the exit rule both apply."""

from .exit_rule import early_exit_thresholds, first_confident_exit, leaves
from .manifest import FORMAT_VERSION, Manifest, ManifestError, load_manifest

__all__ = [
    "FORMAT_VERSION",
    "Manifest",
    "ManifestError",
    "early_exit_thresholds",
    "first_confident_exit",
    "leaves",
    "load_manifest",
]
