"""The object-centric track-grounding model: frozen features, class-agnostic objects linked
into tracks, a sentence-conditioned scorer over the tracks; trained on cached features."""
