"""AIRCON: AI-supported Radiotherapy CONtouring, a DICOM auto-contouring gateway."""
