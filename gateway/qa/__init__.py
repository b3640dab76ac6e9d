"""Clinical QA: what the clinicians changed in the AI contours, measured, trended and reported.

metrics      pure: per-ROI comparison of two masks on one grid (Dice, HD, HD95, MSD,
             surface Dice, added path length, volumes) - definitions in docs/qa-metrics.md
drift        pure: control charts per model version and ROI, alarms, incident candidates
summary      pure: per model version and ROI statistics for `aircon qa`
pairing      pure: which AI structure set an approved one answers; ROI name matching
validation   `aircon validate`: a model on a labelled test set, through the gateway's code path
report       self-contained HTML + CSV reports (validation, monthly monitoring)
"""
