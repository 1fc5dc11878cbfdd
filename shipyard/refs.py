"""One identity for a dataset version, from the CLI to the registry: :class:`DatasetRef`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from shipyard.storage import Store

# Names of datasets and registered models (store paths and MLflow names both accept them).
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
VERSION_PATTERN = r"^[0-9a-f]{16}$"


class DatasetRef(BaseModel):
    """A staged dataset version: the name it is kept under and its content-derived version id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, title="Dataset name",
                      description="Name the dataset's versions are kept under in the store.")
    version: str = Field(pattern=VERSION_PATTERN, title="Dataset version",
                         description="Version id of a staged version (16 hex digits; see 'shipyard data ls').")

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    def manifest_url(self, store: Store) -> str:
        """Return the URI of this version's manifest in ``store`` (the one place it is computed)."""
        from shipyard.datasets.manifest import manifest_key

        return store.url(*manifest_key(self.name, self.version))

    @classmethod
    def parse(cls, text: str) -> DatasetRef:
        """Parse ``name@version``."""
        name, _, version = text.partition("@")
        return cls(name=name, version=version)
