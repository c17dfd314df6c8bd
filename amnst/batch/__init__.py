"""The batch service: stages, the Ray runner, manifests, storage, records, reports, nights."""
