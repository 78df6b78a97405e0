"""The model repository format: the documented, versioned contract between training and server."""
from .manifest import FORMAT_VERSION, Manifest, ManifestError, load_manifest

__all__ = ["FORMAT_VERSION", "Manifest", "ManifestError", "load_manifest"]
