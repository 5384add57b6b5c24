"""The few-shot family: the track-grounding model with a cross-modal affinity module (CMA,
Li et al., ICCV 2023) over a support set of annotated samples of the query's category."""
