"""Test-split evaluation: ``metrics`` (pure numpy), ``plots``, ``evaluate`` (checkpoint ->
metrics + DVCLive plots), ``report`` (results table beside the papers' numbers)."""
