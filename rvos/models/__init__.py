"""Models: backbones, text encoders, cross-modal fusion, temporal modules, heads."""
