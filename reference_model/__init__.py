"""golf-audit's reference model: the Parameter Golf baseline GPT with legal score-first TTT
evals and deliberately broken variants (see docs/reference_model.md)."""
