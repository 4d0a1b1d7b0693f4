"""api: the service (CLI, REST API, Prometheus metrics, dashboard).

The top layer: nothing imports it, so it re-exports nothing. Its entry points
are the ``marsad`` command (:func:`api.cli.run`) and the web application
(:func:`api.main.create_app`); importing the package loads neither (the CLI
starts reading before the web framework or the classifier would load).
"""

__all__: list[str] = []
