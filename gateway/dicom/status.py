"""Named DIMSE status codes (PS3.4 Annex B, PS3.7 Annex C) used by the gateway."""

from __future__ import annotations

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC210
# A UID already recorded for another study or series (ours, in the 0xCxxx "Error: Cannot
# understand" range the Storage Service Class leaves to the SCP). Not 0xA700: the sender would
# retry what can never succeed; not 0xA900: the dataset does match its SOP class; and 0x0111
# (Duplicate SOP Instance) is a DIMSE-N status, not one defined for C-STORE.
UID_CONFLICT = 0xC211
PROCESSING_FAILURE = 0x0110

# The Verification SOP Class (C-ECHO), PS3.4 Annex A.
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
