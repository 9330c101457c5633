"""carepulse's app for the webhook benchmark, plus one trivial route as a baseline.

`gunicorn bench.trivial_app:app` serves exactly what `gunicorn "bot:create_app()"` serves
(the same factory, settings from the environment), with `GET /bench/ping` added here, in
the benchmark, rather than in the project's code: it answers "ok" without touching the
database, so it measures what gunicorn, Flask and the app's request handling cost alone.
"""

from __future__ import annotations

from flask import Response

from bot import create_app


def ping() -> Response:
    """The baseline: the cheapest response the app can give."""
    return Response("ok", mimetype="text/plain")


app = create_app()
app.add_url_rule("/bench/ping", "bench_ping", ping, methods=["GET"])
