"""snplab pytest plugin (placeholder until the suite plugin lands)."""
