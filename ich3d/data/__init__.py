"""Data layer: synthetic RSNA data, DICOM ingest, the volume cache, splits and DataModules."""
