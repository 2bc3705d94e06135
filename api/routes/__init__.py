"""HTTP routes, one blueprint module per concept; api/app.py registers them."""
