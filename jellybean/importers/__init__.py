"""Importers: turn other systems' inputs into Jellybean documents (ModelZoo, Topology, Workflow)."""

from jellybean.importers.jellybean_csv import (
    COMM_COST_SCALING_FACTOR,
    JellyBeanImportWarning,
    import_jellybean,
    load_accuracy_profiles,
    safe_unpickle,
    write_documents,
)

__all__ = [
    "COMM_COST_SCALING_FACTOR",
    "JellyBeanImportWarning",
    "import_jellybean",
    "load_accuracy_profiles",
    "safe_unpickle",
    "write_documents",
]
