"""Test-split evaluation: ``metrics`` (scikit-learn), ``plots``, ``evaluate`` (checkpoint ->
metrics + DVCLive plots), ``report`` (results table beside the papers' numbers)."""
