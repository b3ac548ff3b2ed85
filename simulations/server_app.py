"""The Flower ServerApp: the cloud. `make_server_app(overrides)` serves in-process runs, whose
run config Flower leaves empty."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from chord_fl.federation.runconfig import RunConfig
from simulations.server import serve


def make_server_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, RunConfig.from_mapping({**context.run_config, **(overrides or {})}))

    return app


app = make_server_app()
