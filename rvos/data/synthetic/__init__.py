"""The embedded synthetic referring-video benchmark.

Procedurally generated videos of coloured shapes on textured backgrounds, written in the
Ref-YouTube-VOS on-disk layout, with expressions of five types (attribute, spatial,
relational, motion, temporal) that each provably single out one object::

    from rvos.data.synthetic import SynthConfig, generate_benchmark
    info = generate_benchmark("data/synth", SynthConfig(seed=0))

:func:`generate_fewshot_benchmark` writes the few-shot variant: the shapes as categories in
the four folds of :data:`FEWSHOT_FOLDS`, in the Mini-Ref-YouTube-VOS layout.

``scenes.json`` beside each split describes every object frame by frame, and
:func:`check_expression` re-checks any expression of it from that file alone.
"""

from rvos.data.synthetic.config import (COLORS, EXPRESSION_TYPES, FEWSHOT_FOLDS, GENERATOR_VERSION,
                                        SHAPES, SIZES, SPLITS, SynthConfig,
                                        fewshot_fold_categories, heldout_color_shape_pairs)
from rvos.data.synthetic.language import describe, parse_expression, query_kind
from rvos.data.synthetic.predicates import check_expression, evaluate_query
from rvos.data.synthetic.writer import INFO_FILE, generate_benchmark, generate_fewshot_benchmark

__all__ = ["COLORS", "EXPRESSION_TYPES", "FEWSHOT_FOLDS", "GENERATOR_VERSION", "INFO_FILE", "SHAPES",
           "SIZES", "SPLITS", "SynthConfig", "check_expression", "describe", "evaluate_query",
           "fewshot_fold_categories", "generate_benchmark", "generate_fewshot_benchmark",
           "heldout_color_shape_pairs", "parse_expression", "query_kind"]
