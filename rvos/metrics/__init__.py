"""Evaluation metrics that score like the official tools (DAVIS J/F, Ref-YouTube-VOS
submission checks, A2D/JHMDB-Sentences, MeViS, temporal consistency)."""
