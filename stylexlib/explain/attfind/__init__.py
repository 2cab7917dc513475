"""StylEx's AttFind: per-coordinate effects, greedy selection, sufficiency, the attribute editor."""
