"""Models: shared parts (backbones, text encoders, deformable attention, the feature cache)
and one folder per model family (baseline/, query/, grounding/) with its parts, its objective
and its build; ``rvos.models.build`` assembles any of them from a config."""
