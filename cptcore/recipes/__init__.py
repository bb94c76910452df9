"""Multi-stage recipes: stages of one run (:mod:`.stages`), trainable sets (:mod:`.trainable`),
data mixing (:mod:`.mixing`), learning-rate schedule formulas (:mod:`.schedules`)."""
