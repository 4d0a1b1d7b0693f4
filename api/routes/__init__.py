"""The REST API's routers, one per resource; each module exports its ``router``, which
:func:`api.main.create_app` mounts. The package re-exports none of them."""

__all__: list[str] = []
