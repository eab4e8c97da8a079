"""``memplan serve``: the JSON API and the page over :mod:`memplan.api` (optional ``web`` extra).

Importing this package needs FastAPI; the CLI imports it only inside ``memplan serve``.
"""
