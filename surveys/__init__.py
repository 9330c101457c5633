"""Survey instruments and the logic that asks them."""
