"""Multi-stage recipes: stages of one run (:mod:`.stages`), trainable sets (:mod:`.trainable`),
learning-rate schedule formulas (:mod:`.schedules`)."""
